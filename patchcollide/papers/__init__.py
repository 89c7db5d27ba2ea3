"""The papers' experiments and the trained digits world: ``digits`` (MNIST nets, Li et al.'s
digit experiment), ``reproduce`` (their protocol), ``world`` (the world where colliders are judged
by networks). They use the engine and the run folders like any user of the library."""
