"""Where the jobs of a batch and the parts of an extraction run: ``local`` (this machine) and
``ray`` (a Ray cluster), both behind the small protocol in ``base``, and whatever installed
packages add through the ``patchcollide.executors`` entry points (``core/plugins.py``). The CLI
turns ``--executor`` into one of these objects (``make_executor``) and passes it down; ``batch``
and ``offline`` never import an executor."""
from __future__ import annotations

from ..core.plugins import Registry
from .base import OPTIONS, Executor, ExecutorError, check_executor
from .local import LocalExecutor
from .ray import RayExecutor

EXECUTORS = Registry("patchcollide.executors", "executor", "--executor",
                     {"local": LocalExecutor, "ray": RayExecutor}, check_executor)  # --executor: name -> class


def make_executor(name: str, address: str | None = None, gpus_per_job: float | None = None,
                  cpus_per_job: float | None = None) -> Executor:
    """The executor ``--executor name`` asks for, made with the options given (those not None),
    each of which it must take (its ``options``). A one-line ExecutorError for an unknown name,
    an option the executor does not take, or a package it needs that is not installed (a
    PluginError for a plug-in that cannot be loaded), before anything is loaded or written."""
    if name not in EXECUTORS:
        raise ExecutorError(EXECUTORS.unknown(name))
    cls = EXECUTORS[name]
    given = {k: v for k, v in (("address", address), ("gpus_per_job", gpus_per_job), ("cpus_per_job", cpus_per_job))
             if v is not None}
    for option in given:
        if option not in cls.options:
            flag = OPTIONS[option]
            takers = [n for n in EXECUTORS if EXECUTORS.origin(n) == "built in" and option in EXECUTORS[n].options]
            fix = f"add --executor {takers[0]} or leave out {flag}" if takers else f"leave out {flag}"
            raise ExecutorError(f"{flag} is not an option of --executor {name}; {fix}")
    return cls(**given)
