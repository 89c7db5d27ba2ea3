"""Where the jobs of a batch and the parts of an extraction run: ``local`` (this machine) and
``ray`` (a Ray cluster), both behind the small protocol in ``base``. The CLI turns ``--executor``
into one of these objects (``make_executor``) and passes it down; ``batch`` and ``offline``
never import an executor."""
from __future__ import annotations

from .base import Executor, ExecutorError
from .local import LocalExecutor
from .ray import RayExecutor

EXECUTORS: dict[str, type] = {"local": LocalExecutor, "ray": RayExecutor}


def make_executor(name: str, address: str | None = None, gpus_per_job: float | None = None,
                  cpus_per_job: float | None = None) -> Executor:
    """The executor ``--executor name`` asks for; a one-line ExecutorError for an unknown name, an
    option the executor does not take, or a package it needs that is not installed, before
    anything is loaded or written."""
    if name not in EXECUTORS:
        raise ExecutorError(f"--executor {name!r}: unknown; use {' or '.join(EXECUTORS)}")
    return EXECUTORS[name](address=address, gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job)
