"""One run directory: ``run`` writes and reads it (``run_collide``, ``run_sample``, ``load_run``),
``pictures`` draws its PNGs, ``report`` writes its HTML page. Above ``offline`` and ``engine``."""
