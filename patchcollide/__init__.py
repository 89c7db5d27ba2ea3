"""patchcollide: feature collisions made of real image patches.

The public names, imported on first use (importing the package loads nothing else):
``collide`` (the vertex loop: ``engine.collide.collide``), ``CollideConfig`` (its settings, ``engine.config``,
every field documented), ``load_run`` (a finished run's float vertices, mixing weights, metrics
and config: ``runs.run.load_run``) and ``__version__``. Everything else lives in the stage
folders (README, "Module map"): for example ``from patchcollide.offline.extract import
extract_store``.
"""

from .core.version import __version__

_LAZY = {"collide": ("engine.collide", "collide"), "CollideConfig": ("engine.config", "CollideConfig"),
         "load_run": ("runs.run", "load_run")}
__all__ = ["CollideConfig", "collide", "load_run", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module 'patchcollide' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | {n for n in globals() if n.startswith("__")})  # not _LAZY, nor loaded subpackages
