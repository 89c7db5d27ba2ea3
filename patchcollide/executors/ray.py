"""Ray as the executor of ``batch`` and ``extract`` (``pip install 'patchcollide[ray]'``).

The units of work are the local executor's, spread over the workers of a Ray cluster:

* a batch job is a Ray task that calls ``BatchRunner.run`` in a worker process. Each worker
  process keeps one opened runner (model loaded, index open, targets computed) for the next
  jobs of the same batch. Jobs ask for ``gpus_per_job`` GPUs and ``cpus_per_job`` CPUs, so Ray
  spreads them over every GPU of the cluster, or over its CPUs where there is none;
* an extraction is one task per chunk of ``part_images`` selected images. It decodes them and
  writes the part files that a local extraction writes, into its own chunk folder. The
  driver renames the parts into the store's numbering as soon as every earlier chunk is in, so
  a kill keeps what a local kill keeps.

Everything goes through the same files as locally, so the guarantees are the same: a job is
at its final name only when complete, finished jobs are skipped, failures are recorded with
their traceback, and a worker that dies mid-job is retried by Ray (``WORKER_RETRIES``) and goes
on from the job's checkpoint. Every node must see the output folder, the index, the job
file's inputs and the image folders at the same paths (a shared filesystem).
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator

from ..batch.jobfile import JobsError
from ..batch.locks import job_held
from ..core.errors import first_line
from ..core.files import replace
from ..engine.checkpoints import Interrupted, StopSignals
from ..offline.extract import cut_parts, decode_files
from .base import ExecutorError

log = logging.getLogger(__name__)

INSTALL = "pip install 'patchcollide[ray]'"
WORKER_RETRIES = 3  # Ray runs a task again this many times when its worker process dies
POLL = 0.5  # seconds between the driver's looks at the running jobs
CANCEL_GRACE = 30.0  # seconds a cancelled job gets to save its checkpoint before its worker is killed


def import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--executor ray: Ray is not installed; install the extra with {INSTALL}, "
                            "or use --executor local") from None
    return ray


@contextlib.contextmanager
def cluster(address: str | None) -> Iterator:
    """Ray, connected to the cluster at ``address`` ("auto": the one ``ray start`` runs on this
    machine; "HOST:PORT": a head node), or to a new one on this machine (None). A connection the
    caller made already (``ray.init`` in this process) is used as it is and left open."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs = {"address": address} if address else {"include_dashboard": False}
    quiet = logging.getLogger("ray")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # Ray's start-up banner and notices are not our output
    try:
        ray.init(logging_level=logging.ERROR, log_to_driver=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        reason = first_line(e)
        where = f"--address {address}" if address else "--executor ray"
        fix = ("start one with `ray start --head` there, or leave out --address to start one on this machine"
               if address else "check that this machine can start Ray (`ray start --head`), or use --executor local")
        raise ExecutorError(f"{where}: no Ray cluster could be reached ({reason}); {fix}") from None
    finally:
        quiet.setLevel(level)
    try:
        yield ray
    finally:
        ray.shutdown()


def _cancel(ray, refs, grace: float) -> None:
    """Cancel ``refs``: first politely (Ray raises KeyboardInterrupt in a running task; the job
    keeps its last checkpoint in DIR/.partial/), then, after ``grace`` seconds, by killing the
    workers that still run one."""
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=False)
    if refs and grace > 0:
        with contextlib.suppress(Exception):
            ray.wait(list(refs), num_returns=len(refs), timeout=grace)
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)


# ---------------------------------------------------------------------------------------------
# batch


_RUNNERS: dict = {}  # in a worker process: the opened BatchRunner of the batch it serves


def _worker_runner(spec: dict):
    """This worker process's BatchRunner for the batch ``spec`` describes, opened on first use
    (model loaded, index opened) and kept for the batch's next jobs."""
    runner = _RUNNERS.get(spec["key"])
    if runner is None:
        import torch

        # torch's float results depend on its thread count: a job with N CPUs runs with N threads,
        # and its outputs are byte-identical to a local run with N threads (torch.set_num_threads)
        torch.set_num_threads(spec["threads"])

        for old in _RUNNERS.values():
            old.close()
        _RUNNERS.clear()
        runner = spec["runner_class"](**spec["runner"])
        runner.open()
        _RUNNERS[spec["key"]] = runner
    return runner


def run_job(spec: dict, job) -> tuple[str, float | None]:
    """The Ray task of one batch job: ``BatchRunner.run`` in this worker. Returns (status, seconds
    this run took, or None when nothing ran). JobsError (a full disk) propagates to the driver."""
    runner = _worker_runner(spec)
    status = runner.run(job)
    return status, runner.folder.seconds.pop(job.id, None)


def job_resources(gpus_per_job: float | None, cpus_per_job: float | None) -> tuple[float, float]:
    """(GPUs, CPUs) each job asks the connected cluster for; ``gpus_per_job`` None: 1 on a
    cluster with GPUs, else 0; ``cpus_per_job`` None: 1. ExecutorError where no node has enough."""
    ray = import_ray()
    total = ray.cluster_resources()
    gpus = (1.0 if total.get("GPU", 0) else 0.0) if gpus_per_job is None else float(gpus_per_job)
    cpus = 1.0 if cpus_per_job is None else float(cpus_per_job)
    for name, want, what in (("--gpus-per-job", gpus, "GPU"), ("--cpus-per-job", cpus, "CPU")):
        have = max([n.get("Resources", {}).get(what, 0) for n in ray.nodes() if n.get("Alive")] or [0])
        if want > have:
            raise ExecutorError(f"{name} {want:g}: no node of the Ray cluster has {want:g} {what}s (the largest has "
                                f"{have:g}), so no job could start; lower {name} or add a node with more {what}s")
    return gpus, cpus


def run_jobs(runner, todo: list, events, gpus: float, cpus: float) -> list[str]:
    """Run the jobs ``todo`` of the batch whose driver-side ``runner`` is open (it checked the
    model and the index, and rewrites batch.json as jobs end) as tasks on the connected Ray
    cluster (``cluster``), each asking for ``gpus`` GPUs and ``cpus`` CPUs (``job_resources``).
    Returns the ids of the jobs run (done or failed).

    SIGINT or SIGTERM cancels the running jobs, which keep their last checkpoints, and raises
    ``checkpoints.Interrupted``; a full disk in a job raises its JobsError after cancelling the rest.
    """
    ray = import_ray()
    threads = max(1, int(cpus))
    # the runner's class travels with the spec (pickled by reference): this module imports no runner, so the
    # executors load without torch and the CLI checks --executor before anything loads
    spec = {"key": f"{_spec_key(runner)}-{threads}", "runner_class": type(runner), "runner": _runner_args(runner),
            "threads": threads}
    task = ray.remote(run_job).options(num_cpus=cpus, num_gpus=gpus, max_retries=WORKER_RETRIES,
                                       retry_exceptions=False, name="patchcollide-job")
    spec_ref = ray.put(spec)
    total = ray.cluster_resources()
    slots = min(total.get("CPU", 0) / cpus if cpus else math.inf, total.get("GPU", 0) / gpus if gpus else math.inf)
    probe = 2 * int(min(slots, 10_000)) + 8  # jobs whose locks the driver looks at for the bar
    refs = {task.remote(spec_ref, job): job for job in todo}
    running: list = []
    ran: list[str] = []
    t0 = {job.id: time.time() for job in todo}
    try:
        with StopSignals() as stop:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=POLL)
                # Ray starts tasks about in order: only the first few waiting jobs can be running
                now = [job for job in itertools.islice(refs.values(), probe) if job_held(runner.out_dir, job.out)]
                for job in now:
                    if job not in running:
                        t0[job.id] = time.time()
                        events.job_start(job)
                running = now
                if stop.signum is not None:
                    _cancel(ray, list(refs), CANCEL_GRACE)
                    refs.clear()
                    raise Interrupted("batch interrupted; the running jobs keep their last checkpoints; continue with "
                                      "the same `patchcollide batch` command (finished jobs are kept)", stop.signum)
                for ref in ready:
                    job = refs.pop(ref)
                    status, seconds = _outcome(ray, ref, runner, job, time.time() - t0[job.id])
                    if status == "failed" or seconds is not None:
                        ran.append(job.id)
                    if seconds is not None:
                        runner.folder.seconds[job.id] = seconds
                    if status == "failed":  # as the local executor says it
                        log.warning("job %s (line %d) failed: %s", job.id, job.line,
                                    (runner.folder.failure(job) or {}).get("error"))
                    events.job_end(job, status, time.time() - t0[job.id])
                    runner.folder.write_batch_json()
    except BaseException:  # a full disk (JobsError), Ctrl-C twice, a bug: nothing keeps running
        _cancel(ray, list(refs), 0)
        raise
    return ran


def _outcome(ray, ref, runner, job, seconds: float) -> tuple[str, float | None]:
    """(status, seconds) of a finished task; a task that died for good is recorded as failed."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # the job's code raised past BatchRunner.run
        cause = getattr(e, "cause", None)
        if isinstance(cause, (JobsError, Interrupted)):
            raise cause from None
        exc, tb = (cause if isinstance(cause, Exception) else e), str(e)  # str(e): the worker's traceback
    except ray.exceptions.RayError as e:  # its worker died WORKER_RETRIES + 1 times, was killed for memory, ...
        exc, tb = e, f"{type(e).__name__}: {e}"
    runner.folder.record_failure(job, exc, seconds, tb)
    return "failed", None


def _runner_args(runner) -> dict:
    return {"jobfile": runner.jobfile, "out_dir": runner.out_dir, "options": runner.options}


def _spec_key(runner) -> str:
    what = {**runner.folder.options, "jobs_sha256": runner.jobfile.sha256, "checkpoint_every": runner.checkpoint_every,
            "arch": runner.arch, "layer": runner.layer, "weights": runner.weights}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# extract


def extract_chunk(files: list, roots: list[str], label_of: dict, config, first: int, chunk_dir: str) -> int:
    """The Ray task of one chunk of selected images: decode them and write their parts (cut as a
    local extraction cuts them) to ``chunk_dir``/part-NNNNNN.npz. Returns the number of parts."""
    os.makedirs(chunk_dir, exist_ok=True)
    n = 0
    for part in cut_parts(decode_files(files, roots, config), label_of, roots, first, config):
        part.save(os.path.join(chunk_dir, f"part-{n:06d}.npz"))
        n += 1
    return n


def write_parts(writer, selected: list, roots: list[str], label_of: dict, config, n_parts: int, done: int,
                progress: Callable[[int, int], None] | None, address: str | None = None) -> int:
    """Write the parts of ``selected[done:]`` as Ray tasks and number them after the store's
    ``n_parts`` finished ones, in order; returns the store's number of parts."""
    chunks_dir = os.path.join(writer.parts_dir, "ray")
    shutil.rmtree(chunks_dir, ignore_errors=True)  # a killed run's unfinished chunks are done again
    step = config.part_images
    starts = list(range(done, len(selected), step))
    with cluster(address) as ray:
        task = ray.remote(extract_chunk).options(num_cpus=1, max_retries=WORKER_RETRIES, retry_exceptions=False,
                                                 name="patchcollide-extract")
        roots_ref, labels_ref, config_ref = ray.put(roots), ray.put(label_of), ray.put(config)
        refs = {task.remote(selected[s:s + step], roots_ref, labels_ref, config_ref, s,
                            os.path.join(chunks_dir, f"chunk-{s:09d}")): s for s in starts}
        finished: dict[int, int] = {}  # chunk start -> its number of parts
        installed = done
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    s = refs.pop(ref)
                    try:
                        finished[s] = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:
                        cause = getattr(e, "cause", None)
                        raise (cause if isinstance(cause, Exception) else e) from None
                while installed in finished:  # the next chunk in order is in: number its parts
                    chunk = os.path.join(chunks_dir, f"chunk-{installed:09d}")
                    for i in range(finished.pop(installed)):
                        replace(os.path.join(chunk, f"part-{i:06d}.npz"), writer.part_path(n_parts))
                        n_parts += 1
                    shutil.rmtree(chunk, ignore_errors=True)
                    installed = min(installed + step, len(selected))
                if progress:
                    progress(installed, len(selected))
        except BaseException:
            _cancel(ray, list(refs), 0)
            raise
    shutil.rmtree(chunks_dir, ignore_errors=True)
    return n_parts


class RayExecutor:
    """``--executor ray``: batch jobs and extraction chunks as tasks on the Ray cluster at
    ``address`` (None: a new one on this machine); each batch job asks for ``gpus_per_job`` GPUs
    (None: 1 where the cluster has GPUs, else 0) and ``cpus_per_job`` CPUs (None: 1)."""

    name = "ray"
    summary = "tasks on the workers of a Ray cluster (pip install 'patchcollide[ray]')"
    local = False
    driver_device = "cpu"  # the driver only checks the model; the jobs load theirs on the workers
    options = ("address", "gpus_per_job", "cpus_per_job")

    def __init__(self, address: str | None = None, gpus_per_job: float | None = None,
                 cpus_per_job: float | None = None):
        import_ray()  # missing Ray: one line, before anything is loaded or written
        self.address, self.gpus_per_job, self.cpus_per_job = address, gpus_per_job, cpus_per_job
        self.resources: tuple[float, float] | None = None

    @contextlib.contextmanager
    def connect(self) -> Iterator:
        with cluster(self.address):
            self.resources = job_resources(self.gpus_per_job, self.cpus_per_job)
            yield self

    def run_jobs(self, runner, todo: list, events) -> list[str]:
        if self.resources is None:
            raise RuntimeError("RayExecutor.run_jobs outside connect()")
        return run_jobs(runner, todo, events, *self.resources)

    def write_parts(self, writer, selected: list, roots: list[str], label_of: dict, config, n_parts: int,
                    done: int, progress: Callable[[int, int], None] | None, workers: int) -> int:
        return write_parts(writer, selected, roots, label_of, config, n_parts, done, progress, self.address)
