"""patchcollide: feature collisions made of real image patches.

Offline stage: image folders -> HDF5 patch store (``extract_store``) -> FAISS index
(``build_index``). The API functions live in their modules; import them from there, e.g.
``from patchcollide.extract import extract_store``. Importing this package does nothing else.
"""

__version__ = "0.1.0"
