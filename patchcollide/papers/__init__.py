"""The papers' experiments: ``digits`` (MNIST data and nets, Li et al.'s digit experiment),
``reproduce`` (their protocol), ``peers`` (the reference methods the engine is benchmarked beside). They use the engine
and the run folders like any user of the library."""
