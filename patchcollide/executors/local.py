"""The local executor: batch jobs one after another in this process, extraction parts decoded by
``--workers`` processes of this machine. The default; ``batch.runner`` and ``offline.extract``
do the same when no executor is given."""
from __future__ import annotations

import contextlib
from collections.abc import Callable

from ..batch.events import run_here
from ..offline.extract import write_parts_here


class LocalExecutor:
    name = "local"
    summary = "one job after another in this process"
    local = True
    driver_device = None
    options = ()  # takes none of --address, --gpus-per-job, --cpus-per-job (make_executor says so)

    def connect(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def run_jobs(self, runner, todo: list, events) -> list[str]:
        return run_here(runner, todo, events)

    def write_parts(self, writer, selected: list, roots: list[str], label_of: dict, config, n_parts: int,
                    done: int, progress: Callable[[int, int], None] | None, workers: int) -> int:
        return write_parts_here(writer, selected, roots, label_of, config, n_parts, done, progress, workers)
