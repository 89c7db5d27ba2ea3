"""Batch runner over collide/polytope/report: one job per line of a JSON Lines file
(``jobfile.py`` reads and checks the file; this module runs it).

Output directory DIR::

    <out>/                         one finished run per job (runs.py's layout, polytope check included)
    batch.json                     per job: status, seconds, key metrics (rewritten after every job)
    .tmp/<out>/                    a job's scratch space while it runs; its run is written and
                                   checked there and renamed to <out> only when complete
    .failed/<out>.json             a failed job's record; .failed/<out>.traceback.txt its traceback
    .locks/<out>.lock              held (flock) while a process works on the job
    .lock-all, .lock-shard-I-of-N  held by a batch process for its whole life
    .batch.json.lock               held while batch.json is rewritten

A job is *done* iff ``<out>/report.json`` is a patchcollide run whose config (the device
aside), inputs and model equal the job's, whose vertex PNGs and state.npz are there, and
(samples > 0) whose polytope check has ``samples`` combinations. Statuses are derived from
these files every time, never trusted from batch.json, so a lost update or a killed
process is repaired by the next writer.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import posixpath
import shutil
import socket
import time
import traceback
from collections.abc import Iterator

from ..core.errors import PatchcollideError, first_line
from ..core.files import install_dir, is_locked, locked, try_lock, unlock, versions, write_json, write_text
from ..core.formats import batch_csv, metrics_of, polytope_samples
from ..engine.checkpoints import EVERY, Interrupted
from ..engine.collide import CollideError, target_of, to_tensor
from ..engine.judge import load_judge
from ..engine.models import load_tap, model_identity, random_weights, resolve_device
from ..offline.knn import PatchIndex
from ..runs.run import dataset_images, dataset_paths, load_input, read_report, run_collide, run_sample
from .jobfile import Job, JobFile, JobsError, in_shard, replaceable

log = logging.getLogger(__name__)

BATCH_JSON = "batch.json"
BATCH_CSV = "batch.csv"  # the same jobs, one row each, with every metric
FATAL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}  # stop the batch: every next job would fail too
BUSY_WAIT = 2.0  # seconds to wait for a job lock held briefly (a start-up sweep) before calling the job busy



# ---------------------------------------------------------------------------------------------
# Locks


def batch_lock_path(out_dir: str, shard: tuple[int, int] | None) -> str:
    return os.path.join(out_dir, ".lock-all" if shard is None else f".lock-shard-{shard[0]}-of-{shard[1]}")


@contextlib.contextmanager
def batch_lock(out_dir: str, shard: tuple[int, int] | None = None) -> Iterator[None]:
    """Hold DIR/.lock-all (or .lock-shard-I-of-N) for a batch process's life: a second process
    on the same directory and shard is refused with JobsError. Creates ``out_dir``."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise JobsError(f"--out {out_dir} is a file; give a directory for the batch's outputs")
    os.makedirs(out_dir, exist_ok=True)
    what = "this batch" if shard is None else f"shard {shard[0]}/{shard[1]}"
    busy = JobsError(f"{out_dir}: another process is already running {what} here; wait for it to finish "
                     "(or stop it), or give another --out or --shard")
    with locked(batch_lock_path(out_dir, shard), busy=busy):
        yield


class JobLock:
    """DIR/.locks/<out>.lock, held while a process works on one job, so that processes with
    overlapping shards never write the same job at once; batch.json shows a held one as busy.
    The holder writes "pid host" into the file (emptied on release), for a person to read."""

    def __init__(self, fd: int):
        self.fd = fd

    @classmethod
    def acquire(cls, out_dir: str, out: str, wait: float = BUSY_WAIT) -> JobLock | None:
        """The lock, or None when another process holds it for longer than ``wait`` seconds."""
        d = os.path.join(out_dir, ".locks")
        os.makedirs(d, exist_ok=True)
        deadline = time.monotonic() + wait
        while True:
            fd = try_lock(os.path.join(d, out + ".lock"))
            if fd is not None:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
                return cls(fd)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def release(self) -> None:
        try:
            os.ftruncate(self.fd, 0)
        finally:
            unlock(self.fd)


def job_held(out_dir: str, out: str) -> bool:
    """True when a process (this one included) holds the job's lock now (a probe: never waits)."""
    try:
        return is_locked(os.path.join(out_dir, ".locks", out + ".lock"))
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Running


def _canon(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=list)


def _config_key(config: dict) -> str:
    """A config as JSON without the device: a run made on another device still counts."""
    return _canon({k: v for k, v in config.items() if k != "device"})


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

    def __init__(self, jobfile: JobFile, out_dir: str, arch: str = "vgg16", layer: str = "fc6",
                 weights: str = "imagenet", index_dir: str | None = "index", device: str = "auto",
                 dataset: str | None = None, skip_invalid: bool = False, checkpoint_every: int = EVERY,
                 judge: str | None = None, judge_model: str = "digits_lenet5"):
        self.jobfile, self.out_dir = jobfile, os.path.abspath(out_dir)
        self.judge_weights = os.path.abspath(judge) if judge and os.path.isfile(judge) else judge
        self.judge_model = judge_model
        self.judge = None  # judge.Judge, loaded by open()
        self.checkpoint_every = checkpoint_every
        self.arch, self.layer, self.weights, self.device = arch, layer, weights, device
        self.uses_index = any(j.config.mode == "patches" for j in jobfile.jobs)
        self.index_dir = os.path.abspath(index_dir) if self.uses_index and index_dir else None
        self.dataset = os.path.abspath(dataset) if dataset else None
        self.skip_invalid = skip_invalid
        self.tap = None  # the batch's model (random weights: the first job's seed)
        self.dev = None  # the resolved --device (open() resolves it once)
        self.pindex = None
        self._taps: dict = {}
        self._targets: dict = {}
        self._datasets: dict = {}
        self._dataset_paths: list[str] | None = None
        self._reports: dict = {}
        self._versions: dict | None = None
        self.seconds: dict[str, float] = {}  # measured in this process, by job id

    @property
    def options(self) -> dict:
        return {"out": self.out_dir, "model": self.arch, "layer": self.layer, "weights": self.weights,
                "index": self.index_dir, "device": self.device, "dataset": self.dataset,
                "skip_invalid": self.skip_invalid, "judge": self.judge_weights, "judge_model": self.judge_model}

    def open(self, device: str | None = None) -> None:
        """Load the model (on ``device`` if given, else the batch's --device) and open the index."""
        if self.uses_index and not self.index_dir:
            raise JobsError("patch-mode jobs need an index (-i/--index); build one with `patchcollide index build`")
        if self.uses_index:  # before the model: a bad index fails in a second

            self.pindex = PatchIndex(self.index_dir)
        if self.judge_weights:  # before the model: a bad judge fails in a second

            self.judge = load_judge(self.judge_weights, self.judge_model)
        seed = self.jobfile.jobs[0].config.seed if self.jobfile.jobs else 0
        self.dev = resolve_device(device or self.device)  # once; the batch's own models live there
        self.tap = load_tap(self.arch, self.layer, self.weights, seed=seed).to(self.dev)
        self._taps[self._tap_key(seed)] = self.tap

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
        """models.py's record of the model this job runs with (random weights: seeded by the job)."""
        if self.weights == "random":
            return model_identity(self.arch, self.layer, random_weights(job.config.seed))
        return self.tap.identity()

    def target_for(self, job: Job):
        """``collide.target_of`` for the job's target, computed once per (model, target file,
        size, vertices, first unit) and reused by every job that shares them."""
        key_tap, tap = self.tap_for(job)
        c = job.config
        key = (key_tap, job.target, c.size, c.vertices, c.first_unit)
        if key not in self._targets:
            img = load_input(job.target, c.size, "target")
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

    # -- statuses ------------------------------------------------------------------------------

    def job_dir(self, job: Job) -> str:
        return os.path.join(self.out_dir, job.out)

    def _report(self, run_dir: str) -> dict | None:
        """report.json of a run directory (without its history), cached by file identity."""
        path = os.path.join(run_dir, "report.json")
        try:
            st = os.stat(path)
        except OSError:
            return None
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._reports.get(path)
        if hit and hit[0] == sig:
            return hit[1]
        try:
            with open(path, encoding="utf-8") as fh:
                rep = json.load(fh)
        except (OSError, ValueError):
            rep = None
        if isinstance(rep, dict):
            rep.pop("history", None)
        else:
            rep = None
        self._reports[path] = (sig, rep)
        return rep

    def expected_inputs(self, job: Job) -> dict:
        return {"source": job.source, "target": job.target,
                "index": self.index_dir if job.config.mode == "patches" else None}

    def is_done(self, job: Job) -> bool:
        d = self.job_dir(job)
        rep = self._report(d)
        try:
            ok = (rep is not None and rep.get("kind") == "patchcollide-run"
                  and _config_key(rep["config"]) == _config_key(dataclasses.asdict(job.config))
                  and rep.get("inputs") == self.expected_inputs(job)
                  and rep.get("model") == self.model_identity(job)
                  and (job.samples == 0 or polytope_samples(rep) == job.samples))
        except (KeyError, TypeError, AttributeError):
            return False
        return ok and all(os.path.isfile(os.path.join(d, f))
                          for f in ["state.npz", *(f"vertex_{i}.png" for i in range(job.config.vertices))])

    def fingerprint(self, job: Job) -> str:
        """What a failure record belongs to: a job line changed since it failed is pending again."""
        what = {"config": _config_key(dataclasses.asdict(job.config)), "inputs": self.expected_inputs(job),
                "samples": job.samples, "model": [self.arch, self.layer, self.weights]}
        return hashlib.sha256(_canon(what).encode()).hexdigest()[:16]

    def failure(self, job: Job) -> dict | None:
        try:
            with open(os.path.join(self.out_dir, ".failed", job.out + ".json"), encoding="utf-8") as fh:
                rec = json.load(fh)
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and rec.get("fingerprint") == self.fingerprint(job) else None

    def status(self, job: Job) -> str:
        """done | busy (a process works on it now) | failed | pending, from the files in DIR."""
        if self.is_done(job):
            return "done"
        if job_held(self.out_dir, job.out):
            return "busy"
        return "failed" if self.failure(job) else "pending"

    # -- one job -------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Remove the scratch space (.tmp/<out>) that killed processes left behind, for every job
        whose lock is free; a job being worked on elsewhere keeps its own."""
        tmp = os.path.join(self.out_dir, ".tmp")
        for name in sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []:
            lock = JobLock.acquire(self.out_dir, name, wait=0)
            if lock is None:
                continue
            try:
                shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
            finally:
                lock.release()

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
            if self.is_done(job):  # finished by another process meanwhile
                self._forget_failure(job)
                return "done"
            os.makedirs(scratch)
            t0 = time.time()
            try:
                self._run_into(job, scratch, t0, progress)
            except Interrupted:  # a signal: the checkpoint is saved, the batch stops, the job is not a failure
                raise
            except Exception as e:  # noqa: BLE001 - a failing job is recorded; the batch goes on
                fatal = _fatal_oserror(e)
                if fatal is None:
                    try:
                        self._record_failure(job, e, time.time() - t0, scratch)
                        return "failed"
                    except OSError as e2:
                        fatal = _fatal_oserror(e2)
                        if fatal is None:
                            raise
                raise JobsError(f"{self.out_dir}: {fatal.strerror or fatal} while writing job {job.id!r} (disk "
                                "full or file-size limit); free space and run again: finished jobs are kept and "
                                "this one runs again") from None
            self.seconds[job.id] = time.time() - t0
            self._forget_failure(job)
            return "done"
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            lock.release()

    def _run_into(self, job: Job, scratch: str, t0: float, progress) -> None:
        final = self.job_dir(job)
        if os.path.lexists(final) and not replaceable(final):
            raise CollideError(f"{final} holds files that are not a patchcollide run; move them away")
        _, tap = self.tap_for(job)
        target = self.target_for(job)
        run_dir = os.path.join(scratch, "run")
        run_collide(job.source, job.target, run_dir, job.config, arch=self.arch, layer=self.layer,
                    weights=self.weights, index_dir=self.index_dir, tap=tap,
                    pindex=self.pindex if job.config.mode == "patches" else None, progress=progress,
                    target_stats=target, checkpoint_dir=self.checkpoint_dir(job),
                    checkpoint_every=self.checkpoint_every, resume="auto",
                    again="the same `patchcollide batch` command (finished jobs are kept, this one resumes)",
                    judge=self.judge)
        if job.samples:
            run_sample(run_dir, samples=job.samples, seed=0, device=self.device,
                       dataset_images=self.dataset_for(job.config.size), tap=tap, judge=self.judge)
        report = read_report(run_dir)
        report["batch"] = {"id": job.id, "jobs_file": self.jobfile.path, "line": job.line,
                           "seconds": round(time.time() - t0, 3)}
        write_json(os.path.join(run_dir, "report.json"), report)
        # The new run goes in whole: an older (stale) run is moved into the scratch space first.
        install_dir(run_dir, final, aside=os.path.join(scratch, "old"))
        shutil.rmtree(self.checkpoint_dir(job), ignore_errors=True)  # only now: a kill before resumes from it

    def checkpoint_dir(self, job: Job) -> str:
        """DIR/.partial/<out>: the job's checkpoint, kept across kills until the job is installed."""
        return os.path.join(self.out_dir, ".partial", job.out)

    def record_failure(self, job: Job, exc: BaseException, seconds: float, tb: str) -> None:
        """Record that ``job`` failed outside ``run`` (an executor lost it; ``tb``: what it
        knows of the traceback), unless it is done or running again."""
        lock = JobLock.acquire(self.out_dir, job.out)
        if lock is None:  # someone works on it again
            return
        scratch = os.path.join(self.out_dir, ".tmp", job.out)
        try:
            if not self.is_done(job):
                os.makedirs(scratch, exist_ok=True)
                self._record_failure(job, exc, seconds, scratch, tb)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            lock.release()

    def _record_failure(self, job: Job, exc: BaseException, seconds: float, scratch: str,
                        tb: str | None = None) -> None:
        d = os.path.join(self.out_dir, ".failed")
        os.makedirs(d, exist_ok=True)
        tb_rel = posixpath.join(".failed", job.out + ".traceback.txt")
        write_text(os.path.join(self.out_dir, tb_rel), tb or traceback.format_exc(),
                   tmp=os.path.join(scratch, os.path.basename(tb_rel)))
        msg = first_line(exc, 200) if str(exc).strip() else ""
        path = getattr(exc, "path", None)  # an image that did not decode: name it (BadImage's message does not)
        if isinstance(path, str) and path and path not in msg:
            msg = f"{path}: {msg}"
        # a user error's message stands alone; a bug keeps its class name (IndexError_ is ours, not for users)
        error = msg if isinstance(exc, PatchcollideError) and msg else (
            f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__)
        rec = {"id": job.id, "line": job.line, "out": job.out, "error": error, "traceback": tb_rel, "seconds": round(seconds, 3),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "fingerprint": self.fingerprint(job)}
        write_json(os.path.join(d, job.out + ".json"), rec, tmp=os.path.join(scratch, job.out + ".json"))
        log.warning("job %s (line %d) failed: %s", job.id, job.line, rec["error"])

    def _forget_failure(self, job: Job) -> None:
        for suffix in (".json", ".traceback.txt"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.out_dir, ".failed", job.out + suffix))

    # -- batch.json ----------------------------------------------------------------------------

    def entry(self, job: Job) -> dict:
        st = self.status(job)
        e = {"id": job.id, "line": job.line, "out": job.out, "status": st, "seconds": None, "error": None,
             "traceback": None, "metrics": None}
        if st == "done":
            rep = self._report(self.job_dir(job))
            e["seconds"] = self.seconds.get(job.id, (rep.get("batch") or {}).get("seconds", rep.get("seconds")))
            e["metrics"] = metrics_of(rep)
        elif st == "failed":
            rec = self.failure(job)
            e.update(seconds=rec.get("seconds"), error=rec.get("error"), traceback=rec.get("traceback"))
        if e["seconds"] is not None:
            e["seconds"] = round(float(e["seconds"]), 3)
        return e

    def batch_json(self, created: str | None = None) -> dict:
        self._versions = self._versions or versions()
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        entries = [(j.position, self.entry(j)) for j in self.jobfile.jobs]
        entries += [(j.position, {"id": j.id, "line": j.line, "out": j.out, "status": "invalid", "seconds": None,
                                  "error": j.error, "traceback": None, "metrics": None}) for j in self.jobfile.invalid]
        return {"kind": "patchcollide-batch", "jobs_file": self.jobfile.path, "jobs_sha256": self.jobfile.sha256,
                "created": created or now, "updated": now, "options": self.options,
                "model": self.tap.identity() if self.tap is not None else None, "versions": self._versions,
                "jobs": [e for _, e in sorted(entries, key=lambda pe: pe[0])]}

    def write_batch_json(self) -> dict:
        """Rewrite DIR/batch.json from the files in DIR (read-modify-write under
        DIR/.batch.json.lock, temporary file + rename); returns what it wrote."""
        path = os.path.join(self.out_dir, BATCH_JSON)
        with locked(os.path.join(self.out_dir, ".batch.json.lock")):
            created = None
            with contextlib.suppress(OSError, ValueError, AttributeError), open(path, encoding="utf-8") as fh:
                created = json.load(fh).get("created")
            data = self.batch_json(created)
            write_json(path, data, default=str, tmp=os.path.join(self.out_dir, ".batch.json.tmp"))
            write_text(os.path.join(self.out_dir, BATCH_CSV), batch_csv(data["jobs"]),
                       tmp=os.path.join(self.out_dir, ".batch.csv.tmp"))
            return data


class BatchEvents:
    """What ``run_batch`` tells its caller (the CLI draws a progress bar); every method is optional."""

    def start(self, todo: list[Job]) -> None: ...

    def job_start(self, job: Job) -> None: ...

    def job_end(self, job: Job, status: str, seconds: float) -> None: ...

    def step(self, step: int, total: int, loss: float, worst: float) -> None: ...


@dataclasses.dataclass
class BatchResult:
    batch: dict  # what batch.json holds now
    mine: list[dict]  # batch.json's entries of this process's shard (invalid lines included)
    ran: list[str]  # ids of the jobs this process ran (done or failed)


def run_here(runner: BatchRunner, todo: list[Job], events: BatchEvents) -> list[str]:
    """The local executor: run ``todo`` one after another in this process, rewriting batch.json
    after each. Returns the ids of the jobs run (done or failed)."""
    ran = []
    for job in todo:
        events.job_start(job)
        t0 = time.time()
        status = runner.run(job, progress=events.step)
        if status == "failed" or job.id in runner.seconds:
            ran.append(job.id)
        events.job_end(job, status, time.time() - t0)
        runner.write_batch_json()
    return ran


def run_batch(jobfile: JobFile, out_dir: str, arch: str = "vgg16", layer: str = "fc6", weights: str = "imagenet",
              index_dir: str | None = "index", device: str = "auto", dataset: str | None = None,
              shard: tuple[int, int] | None = None, retry_failed: bool = False, skip_invalid: bool = False,
              events: BatchEvents | None = None, checkpoint_every: int = EVERY, executor=None,
              judge: str | None = None, judge_model: str = "digits_lenet5") -> BatchResult:
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
    if jobfile.invalid and not skip_invalid:
        n = len(jobfile.invalid)
        raise JobsError(f"{n} invalid line{'s' if n > 1 else ''} in {jobfile.path}; fix them or pass --skip-invalid")
    if not jobfile.jobs:
        raise JobsError(f"{jobfile.path}: no valid jobs ({len(jobfile.invalid)} invalid lines)")
    if dataset and not os.path.isdir(dataset):
        raise JobsError(f"--dataset {dataset}: no such folder; give an image folder or leave it out")
    created = not os.path.exists(out_dir)
    runner = BatchRunner(jobfile, out_dir, arch, layer, weights, index_dir, device, dataset, skip_invalid,
                         checkpoint_every, judge, judge_model)
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
            runner.sweep()
            mine = [j for j in jobfile.jobs if in_shard(j.position, shard)]
            if retry_failed:
                todo = [j for j in mine if not runner.is_done(j) and runner.failure(j) is not None]
            else:
                todo = [j for j in mine if not runner.is_done(j)]
            runner.write_batch_json()
            events.start(todo)
            try:
                ran = (executor.run_jobs if executor is not None else run_here)(runner, todo, events)
            except JobsError:  # a full disk: batch.json says what is done so far
                with contextlib.suppress(OSError):
                    runner.write_batch_json()
                raise
            batch = runner.write_batch_json()
    finally:
        runner.close()
    positions = {j.line for j in jobfile.jobs + jobfile.invalid if in_shard(j.position, shard)}
    return BatchResult(batch, [e for e in batch["jobs"] if e["line"] in positions], ran)
