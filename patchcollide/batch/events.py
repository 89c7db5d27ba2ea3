"""What a batch tells its caller as it runs (``BatchEvents``), and the local way of running its
jobs (``run_here``). Torch-free, like ``jobfile``: the CLI's progress class and the local executor
import it before anything loads; the runner that loads the model is ``batch.runner``."""
from __future__ import annotations

import time

from .jobfile import Job


class BatchEvents:
    """What ``run_batch`` tells its caller (the CLI draws a progress bar); every method is optional."""

    def start(self, todo: list[Job]) -> None: ...

    def job_start(self, job: Job) -> None: ...

    def job_end(self, job: Job, status: str, seconds: float) -> None: ...

    def step(self, step: int, total: int, loss: float, worst: float) -> None: ...


def run_here(runner, todo: list[Job], events: BatchEvents) -> list[str]:
    """The local executor: run ``todo`` one after another in this process through the open
    ``runner`` (``batch.runner.BatchRunner``), rewriting batch.json after each. Returns the ids of
    the jobs run (done or failed)."""
    ran = []
    for job in todo:
        events.job_start(job)
        t0 = time.time()
        status = runner.run(job, progress=events.step)
        if status == "failed" or job.id in runner.folder.seconds:
            ran.append(job.id)
        events.job_end(job, status, time.time() - t0)
        runner.folder.write_batch_json()
    return ran
