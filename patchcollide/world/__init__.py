"""The trained digits world, where colliders are judged by trained networks: ``build`` (build
it once, open it, run the demo on it) and ``config`` (its settings and one-line error, torch-free:
the CLI checks them before torch loads). Uses the engine, the run folders and the papers' MNIST
loader like any user of the library."""
