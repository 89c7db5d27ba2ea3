"""The executor protocol: what ``batch`` and ``extract`` ask of the thing that runs their units
of work. A new executor is one class with these members, registered in ``executors.EXECUTORS``
(by another package: a ``patchcollide.executors`` entry point; docs/extending.md);
``batch.runner`` and ``offline.extract`` receive the object and never import an executor."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import ClassVar, Protocol

from ..core.errors import PatchcollideError

OPTIONS = {"address": "--address", "gpus_per_job": "--gpus-per-job", "cpus_per_job": "--cpus-per-job"}
# the command line's executor options: keyword -> flag (make_executor passes the given ones)


class ExecutorError(PatchcollideError):
    """A wrong executor option, a missing package, or a cluster that cannot be reached or used."""


class Executor(Protocol):
    """Class members: ``name`` (what --executor calls it), ``summary`` (its line in --executor's
    help), ``local`` (it runs in this process: extract's --workers applies), ``driver_device``
    (where the batch's driver loads its model to check it; None: --device), ``options`` (the
    keywords of ``OPTIONS`` it takes).

    ``__init__(**options)`` gets the options the user gave (not None), only those named in
    ``options`` (``make_executor`` refuses the others in one line); it checks them and raises
    ExecutorError (one line) for a value or a missing package, before anything loads."""

    name: ClassVar[str]
    summary: ClassVar[str]
    local: ClassVar[bool]
    driver_device: ClassVar[str | None]
    options: ClassVar[tuple[str, ...]]

    def connect(self) -> contextlib.AbstractContextManager:
        """Held for the whole batch or extraction, before the model loads: a cluster that cannot
        be reached or is too small fails here, in seconds."""

    def run_jobs(self, runner, todo: list, events) -> list[str]:
        """Run the batch jobs ``todo`` (``batch.jobfile.Job``, picklable) through the open ``runner``
        (``BatchRunner.run(job)`` -> its status; ``runner.folder.write_batch_json()`` after each)
        and tell ``events`` (``job_start(job)``, ``job_end(job, status, seconds)``); returns the ids
        run. ``batch.events.run_here`` does all of it in this process, in order. Elsewhere (other
        processes or machines) a job runs as ``type(runner)(**runner args)``, opened, then
        ``run(job)``, as ``executors/ray.py`` does; every name the job uses (its search space and
        objective) resolves there from the installed packages."""

    def write_parts(self, writer, selected: list, roots: list[str], label_of: dict, config, n_parts: int,
                    done: int, progress: Callable[[int, int], None] | None, workers: int) -> int:
        """Write the store parts of ``selected[done:]`` after ``writer``'s ``n_parts`` finished
        ones, in order; returns the store's number of parts (``offline.extract.write_parts_here``
        does it in this process)."""


def check_executor(obj) -> str | None:
    """What keeps ``obj`` from being an executor class (``EXECUTORS``' check of a plug-in), or None."""
    if not isinstance(obj, type):
        return "it is no class"
    missing = [m for m in ("name", "local", "driver_device", "options", "connect", "run_jobs", "write_parts")
               if not hasattr(obj, m)]
    if missing:
        return f"it has no {', '.join(missing)}"
    unknown = [o for o in obj.options if o not in OPTIONS]
    if unknown:
        return f"its options {unknown} are none of {', '.join(OPTIONS)}"
    return None
