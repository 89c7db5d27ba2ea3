"""The executor protocol: what ``batch`` and ``extract`` ask of the thing that runs their units
of work. A new executor is one module with a class that has these members, plus one line in
``executors.EXECUTORS``; ``batch.runner`` and ``offline.extract`` receive the object and never
import an executor (see the README's "Adding an executor")."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

from ..core.errors import PatchcollideError


class ExecutorError(PatchcollideError):
    """A wrong executor option, a missing package, or a cluster that cannot be reached or used."""


class Executor(Protocol):
    name: str  # what --executor calls it
    local: bool  # runs in this process: extract's --workers applies
    driver_device: str | None  # where the batch's driver loads its model to check it (None: --device)

    def connect(self) -> contextlib.AbstractContextManager:
        """Held for the whole batch or extraction, before the model loads: a cluster that cannot
        be reached or is too small fails here, in seconds."""

    def run_jobs(self, runner, todo: list, events) -> list[str]:
        """Run the batch jobs ``todo`` through the open ``runner`` (``BatchRunner.run(job)``;
        ``runner.folder.write_batch_json()`` after each) and tell ``events``; returns the ids run."""

    def write_parts(self, writer, selected: list, roots: list[str], label_of: dict, config, n_parts: int,
                    done: int, progress: Callable[[int, int], None] | None, workers: int) -> int:
        """Write the store parts of ``selected[done:]`` after ``writer``'s ``n_parts`` finished
        ones, in order; returns the store's number of parts."""
