"""The offline stage, run once: image folders -> HDF5 patch store (``extract``, ``store``) ->
patch vectors (``descriptors``) -> FAISS index (``index_build``, its format ``index_format``,
searched by ``knn``). Imports only ``core``; the engine never imports it (``collide`` receives
the index as an object)."""
