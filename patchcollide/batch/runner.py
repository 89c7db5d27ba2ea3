"""The batch runner: runs the jobs of a JSON Lines job file (``jobfile`` reads and checks it)
into a batch folder (``folder`` keeps its job state and files). ``BatchRunner`` holds what the
jobs share: the model, the index, the targets computed, the dataset images; ``run_batch``
runs this process's share with an executor object (none: one job after another here).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import time

from ..core.files import install_dir, write_report
from ..engine.checkpoints import Interrupted
from ..engine.collide import target_of, to_tensor
from ..engine.config import CollideError
from ..models.judge import check_apart, load_judge
from ..runs.sizes import warn_size
from ..models.build import input_fit, load_tap, model_identity, resolve_device
from ..models.weights import random_weights, resolve_weights
from ..offline.knn import PatchIndex
from ..runs.inputs import Resume, dataset_images, dataset_paths, read_report
from ..runs.run import load_input, run_collide, run_sample
from .events import BatchEvents, run_here
from .folder import BatchFolder, BatchOptions, check_batch
from .jobfile import Job, JobFile, JobsError, in_shard, replaceable
from .locks import JobLock, batch_lock, batch_lock_path

log = logging.getLogger(__name__)

FATAL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}  # stop the batch: every next job would fail too


def _fatal_oserror(e: BaseException) -> OSError | None:
    """The disk-full / file-size-limit OSError behind ``e``, if there is one."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in FATAL_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


class BatchRunner:
    """The state a batch shares across its jobs: the model (one per seed with random weights,
    as ``collide --weights random --seed N`` builds it), the patch index, the target
    activations already computed, the dataset images for the distance comparison and
    the parsed reports of finished jobs. ``open()`` loads the model and the index."""

    def __init__(self, jobfile: JobFile, out_dir: str, options: BatchOptions = BatchOptions()):
        o = options
        self.jobfile, self.out_dir = jobfile, os.path.abspath(out_dir)
        self.uses_index = any(j.config.space.needs_index for j in jobfile.jobs)
        # resolved: absolute paths, no index where no job needs one (what batch.json records)
        self.options = dataclasses.replace(
            o, judge=os.path.abspath(o.judge) if o.judge and os.path.isfile(o.judge) else o.judge,
            index_dir=os.path.abspath(o.index_dir) if self.uses_index and o.index_dir else None,
            dataset=os.path.abspath(o.dataset) if o.dataset else None)
        o = self.options
        self.arch, self.layer, self.weights, self.device = o.arch, o.layer, o.weights, o.device
        self.index_dir, self.dataset, self.checkpoint_every = o.index_dir, o.dataset, o.checkpoint_every
        self.judge = None  # judge.Judge, loaded by open()
        self.tap = None  # the batch's model (random weights: the first job's seed)
        self.dev = None  # the resolved --device (open() resolves it once)
        self.pindex = None
        self._taps: dict = {}
        self._targets: dict = {}
        self._datasets: dict = {}
        self._dataset_paths: list[str] | None = None
        recorded = {"out": self.out_dir, "model": o.arch, "layer": o.layer, "weights": o.weights,
                    "index": o.index_dir, "device": o.device, "dataset": o.dataset,
                    "skip_invalid": o.skip_invalid, "judge": o.judge, "judge_model": o.judge_model}
        self.folder = BatchFolder(jobfile, out_dir, recorded, self.model_identity, o.index_dir,
                                  [o.arch, o.layer, o.weights])

    def open(self, device: str | None = None) -> None:
        """Load the model (on ``device`` if given, else the batch's --device) and open the index."""
        if self.uses_index and not self.index_dir:
            raise JobsError("patch-mode jobs need an index (-i/--index); build one with `patchcollide index build`")
        if self.uses_index:  # before the model: a bad index fails in a second

            self.pindex = PatchIndex(self.index_dir)
        if self.options.judge:  # before the model: a bad judge fails in a second
            self.judge = load_judge(self.options.judge, self.options.judge_model)
            check_apart(self.judge, self.weights)
        for size in sorted({j.config.size for j in self.jobfile.jobs}):  # once per size, naming the job key
            warn_size(size, self.index_dir if self.uses_index else None, self.weights, option='job key "size"')
        seed = self.jobfile.jobs[0].config.seed if self.jobfile.jobs else 0
        self.dev = resolve_device(device or self.device)  # once; the batch's own models live there
        self.tap = load_tap(self.arch, self.layer, self.weights, seed=seed).to(self.dev)
        self._taps[self._tap_key(seed)] = self.tap
        self.folder.model = self.tap.identity()

    def close(self) -> None:
        if self.pindex is not None:
            self.pindex.close()
            self.pindex = None

    # -- models, targets, dataset -------------------------------------------------------------

    def _tap_key(self, seed: int):
        return seed if self.weights == "random" else None

    def tap_for(self, job: Job):
        key = self._tap_key(job.config.seed)
        if key not in self._taps:
            # one extra random model at a time (VGG-16 is half a gigabyte)
            for k in [k for k in self._taps if self._taps[k] is not self.tap]:
                del self._taps[k]
            self._taps[key] = load_tap(self.arch, self.layer, self.weights, seed=job.config.seed).to(self.dev)
        return key, self._taps[key]

    def model_identity(self, job: Job) -> dict:
        """``models.build``' record of the model this job runs with (random weights: seeded by the job)."""
        if self.weights == "random":
            return model_identity(self.arch, self.layer, random_weights(job.config.seed))
        return self.tap.identity()

    def target_for(self, job: Job):
        """``collide.target_of`` for the job's target, computed once per (model, target file,
        size, fit as resolved for the model, background, vertices, first unit) and reused by
        every job that shares them."""
        key_tap, tap = self.tap_for(job)
        c = job.config
        geometry = input_fit(tap.arch, tap.weights.kind)  # what fit auto does to it; run_collide takes the same
        key = (key_tap, job.target, c.size, c.fit, geometry, c.background, c.vertices, c.first_unit)
        if key not in self._targets:
            img = load_input(job.target, c, "target", geometry)
            t = target_of(tap, to_tensor(img).to(self.dev), c.vertices, c.first_unit)
            self._targets[key] = t
        return self._targets[key]

    def dataset_for(self, size: int):
        """Dataset images (N, size, size, 3) uint8 for the polytope check's distance comparison:
        the --dataset folder, else the index's store images when the batch uses an index, else None."""
        if self._dataset_paths is None:
            self._dataset_paths = dataset_paths(self.dataset, self.pindex.store if self.pindex is not None else None)
        if size not in self._datasets:
            self._datasets[size] = dataset_images(self._dataset_paths, size, seed=0) if self._dataset_paths else None
        return self._datasets[size]

    def run(self, job: Job, progress=None) -> str:
        """Run one job unless it is done or busy; returns its status afterwards: done, failed or busy.

        The run is written into DIR/.tmp/<out>/run, checked there (polytope) and renamed to
        DIR/<out> only when complete. Failures (any Exception) are recorded in DIR/.failed/;
        a full disk or file-size limit stops the batch with JobsError instead.
        """
        lock = JobLock.acquire(self.out_dir, job.out)
        if lock is None:
            return "busy"
        scratch = os.path.join(self.out_dir, ".tmp", job.out)
        try:
            shutil.rmtree(scratch, ignore_errors=True)
            if self.folder.is_done(job):  # finished by another process meanwhile
                self.folder.forget_failure(job)
                return "done"
            os.makedirs(scratch)
            t0 = time.time()
            try:
                seconds = self._run_into(job, scratch, progress)
            except Interrupted:  # a signal: the checkpoint is saved, the batch stops, the job is not a failure
                raise
            except Exception as e:  # noqa: BLE001 - a failing job is recorded; the batch goes on
                fatal = _fatal_oserror(e)
                if fatal is None:
                    try:
                        self.folder.record_failure_here(job, e, time.time() - t0, scratch)
                        return "failed"
                    except OSError as e2:
                        fatal = _fatal_oserror(e2)
                        if fatal is None:
                            raise
                raise JobsError(f"{self.out_dir}: {fatal.strerror or fatal} while writing job {job.id!r} (disk "
                                "full or file-size limit); free space and run again: finished jobs are kept and "
                                "this one runs again") from None
            self.folder.seconds[job.id] = seconds
            self.folder.forget_failure(job)
            return "done"
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            lock.release()

    def _run_into(self, job: Job, scratch: str, progress) -> float:
        """Run, check and install one job; returns its seconds: the optimisation's, earlier
        processes' share of a resumed job included (report.json's), plus the check's."""
        final = self.folder.job_dir(job)
        if os.path.lexists(final) and not replaceable(final):
            raise CollideError(f"{final} holds files that are not a patchcollide run; move them away")
        _, tap = self.tap_for(job)
        target = self.target_for(job)
        run_dir = os.path.join(scratch, "run")
        run_collide(job.source, job.target, run_dir, job.config, arch=self.arch, layer=self.layer,
                    weights=self.weights, index_dir=self.index_dir, tap=tap,
                    pindex=self.pindex if job.config.space.needs_index else None, progress=progress,
                    target_stats=target, checkpoint_dir=self.folder.checkpoint_dir(job),
                    checkpoint_every=self.checkpoint_every, resume=Resume.IF_SAME_RUN,
                    again="the same `patchcollide batch` command (finished jobs are kept, this one resumes)",
                    judge=self.judge)
        collided = time.time()
        if job.samples:
            run_sample(run_dir, samples=job.samples, seed=0, device=self.device,
                       dataset_images=self.dataset_for(job.config.size), tap=tap, judge=self.judge)
        report = read_report(run_dir)
        seconds = float(report["seconds"]) + time.time() - collided
        report["batch"] = {"id": job.id, "jobs_file": self.jobfile.path, "line": job.line, "seconds": round(seconds, 3)}
        write_report(os.path.join(run_dir, "report.json"), report)
        # The new run goes in whole: an older (stale) run is moved into the scratch space first.
        install_dir(run_dir, final, aside=os.path.join(scratch, "old"))
        shutil.rmtree(self.folder.checkpoint_dir(job), ignore_errors=True)  # only now: a kill before resumes from it
        return seconds


@dataclasses.dataclass
class BatchResult:
    batch: dict  # what batch.json holds now
    mine: list[dict]  # batch.json's entries of this process's shard (invalid lines included)
    ran: list[str]  # ids of the jobs this process ran (done or failed)


def run_batch(jobfile: JobFile, out_dir: str, options: BatchOptions = BatchOptions(),
              shard: tuple[int, int] | None = None, retry_failed: bool = False, events: BatchEvents | None = None,
              executor=None) -> BatchResult:
    """Run this process's share of ``jobfile`` into ``out_dir``.

    ``executor`` None runs the jobs one after another in this process (``run_here``); an
    executor object (``executors.make_executor``, e.g. Ray's) runs them its way. The outputs
    are the same.

    A job saves a checkpoint in DIR/.partial/<out>/ every ``checkpoint_every`` steps (and on
    SIGINT/SIGTERM, which stop the batch with checkpoints.Interrupted); the next run of the
    batch goes on from it, to the same outputs as a run never stopped.

    Runs every job of the shard that is not done (pending and failed ones); with
    ``retry_failed`` only those whose recorded status is failed. Holds the shard's batch
    lock throughout; updates DIR/batch.json after every job. Raises JobsError for user
    mistakes (invalid lines without ``skip_invalid``, a locked directory, a full disk).
    """
    events = events or BatchEvents()
    check_batch(jobfile, options, out_dir, shard)  # the checks the CLI makes before torch
    # auto made concrete once, for every job and worker
    options = dataclasses.replace(options, weights=resolve_weights(options.weights, options.arch))
    created = not os.path.exists(out_dir)
    runner = BatchRunner(jobfile, out_dir, options)
    try:
        with batch_lock(out_dir, shard), contextlib.ExitStack() as stack:
            try:
                if executor is not None:  # an unreachable or too small cluster fails before the model loads
                    stack.enter_context(executor.connect())
                # a bad model or index: nothing is written. Ray's driver only checks the model (on the CPU)
                runner.open(device=executor.driver_device if executor is not None else None)
            except BaseException:
                if created:  # leave no empty directory behind
                    with contextlib.suppress(OSError):
                        os.remove(batch_lock_path(out_dir, shard))
                        os.rmdir(out_dir)
                raise
            runner.folder.sweep()
            mine = [j for j in jobfile.jobs if in_shard(j.position, shard)]
            if retry_failed:
                todo = [j for j in mine if not runner.folder.is_done(j) and runner.folder.failure(j) is not None]
            else:
                todo = [j for j in mine if not runner.folder.is_done(j)]
            runner.folder.write_batch_json()
            events.start(todo)
            try:
                ran = (executor.run_jobs if executor is not None else run_here)(runner, todo, events)
            except (JobsError, Interrupted):  # a full disk or a signal: batch.json says what is done so far
                with contextlib.suppress(OSError):
                    runner.folder.write_batch_json()
                raise
            batch = runner.folder.write_batch_json()
    finally:
        runner.close()
    positions = {j.line for j in jobfile.jobs + jobfile.invalid if in_shard(j.position, shard)}
    return BatchResult(batch, [e for e in batch["jobs"] if e["line"] in positions], ran)
