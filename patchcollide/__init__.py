"""patchcollide: feature collisions made of real image patches.

Offline stage: image folders -> HDF5 patch store (``extract_store``) -> FAISS index
(``build_index``). The API functions live in their modules; import them from there, e.g.
``from patchcollide.extract import extract_store``. Importing this package does nothing else;
``patchcollide.load_run(path)`` (runs.load_run: a finished run's float vertices, mixing weights,
metrics and config) is imported on first use.
"""

from .core.version import __version__


def __getattr__(name: str):
    if name == "load_run":
        from .runs.run import load_run

        return load_run
    raise AttributeError(f"module 'patchcollide' has no attribute {name!r}")
