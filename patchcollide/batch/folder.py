"""A batch folder's job state and files: which jobs are done, busy, failed or pending (always
derived from the files, never trusted from batch.json), the failure records, the checkpoints'
places, and batch.json / batch.csv. ``runner.BatchRunner`` runs the jobs into it.

Output directory DIR::

    <out>/                         one finished run per job (runs.run's layout, polytope check included)
    batch.json                     per job: status, seconds, key metrics (rewritten after every job)
    batch.csv                      the same jobs, one row each, with every metric
    .tmp/<out>/                    a job's scratch space while it runs; its run is written and
                                   checked there and renamed to <out> only when complete
    .partial/<out>/                a job's checkpoint, kept across kills until the job is installed
    .failed/<out>.json             a failed job's record; .failed/<out>.traceback.txt its traceback
    .locks/<out>.lock              held (flock) while a process works on the job
    .lock-all, .lock-shard-I-of-N  held by a batch process for its whole life
    .batch.json.lock               held while batch.json is rewritten

A job is *done* iff ``<out>/report.json`` is a patchcollide run whose config (the device
aside), inputs and model equal the job's, whose vertex PNGs and state.npz are there, and
(samples > 0) whose polytope check has ``samples`` combinations. Statuses are derived from
these files every time, so a lost update or a killed process is repaired by the next writer.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import time
import traceback
from collections.abc import Callable

from ..core.errors import PatchcollideError, first_line
from ..core.files import locked, versions, write_json, write_text
from ..core.formats import INDEX_DIR, batch_csv, metrics_of, polytope_samples
from ..core.jsontypes import canonical
from ..engine.checkpoints import EVERY, saved_step
from ..core.settings import check_fields, setting
from ..engine.config import DEVICES, CollideConfig
from ..models.names import (DEFAULT_WEIGHTS, WEIGHTS_METAVAR,
                            weights_help)
from ..runs.inputs import JudgeOptions, NetOptions
from ..engine.checkpoints import NAME as CHECKPOINT
from ..offline.knn import PatchIndex
from .jobfile import Job, JobFile, JobsError
from .locks import JobLock, job_held, refuse_busy

log = logging.getLogger(__name__)

BATCH_JSON = "batch.json"
BATCH_CSV = "batch.csv"  # the same jobs, one row each, with every metric


@dataclasses.dataclass(frozen=True)
class BatchOptions(NetOptions, JudgeOptions):
    """The options a whole batch shares (the command's, beside the job lines; the ``batch``
    command's options are derived from it): the model and layer (``NetOptions``), the judge
    (``JudgeOptions``), the weights, the index, the device, the dataset for the distance check, whether invalid lines
    are skipped and the checkpoint interval. Checked when made (choices, bounds: JobsError about the
    field)."""

    # auto: made concrete once, by run_batch, for every job and worker
    weights: str = setting(DEFAULT_WEIGHTS, weights_help("Random weights: each job's seed seeds the model, as in "
                                                         "collide."), metavar=WEIGHTS_METAVAR)
    index_dir: str | None = setting(INDEX_DIR, "Patch index (opened once; only when some job is in patch mode).",
                                    flags=("-i", "--index"), metavar="DIRECTORY")  # None: pixel-mode jobs only
    device: str = setting("auto", "Where the jobs compute (auto: CUDA when present; with Ray, each worker's own).",
                          choices=DEVICES)
    dataset: str | None = setting(None, "Image folder for the dataset distance in the polytope check.",
                                  metavar="DIRECTORY",
                                  default_text="the index's images when some job is in patch mode, else none")
    skip_invalid: bool = setting(False, "Run the valid jobs even if some lines are invalid.")
    checkpoint_every: int = setting(EVERY, "Steps between a job's checkpoints in DIR/.partial/ (also on Ctrl-C / "
                                    "SIGTERM); a job killed or interrupted goes on from its checkpoint when the batch "
                                    "runs again.", bounds=(0, None))

    def __post_init__(self):
        check_fields(self, JobsError)


def check_batch(jobfile: JobFile, options: BatchOptions, out_dir: str | None = None,
                shard: tuple[int, int] | None = None) -> None:
    """The checks of a batch that need no model (and no torch), made before anything is loaded
    or written: no other process runs the shard in ``out_dir`` (``locks.refuse_busy``), valid
    lines (unless ``skip_invalid``), at least one job, the --dataset folder, and for patch-mode
    jobs an index that opens. ``run_batch`` makes them first; the CLI makes them before it
    imports torch. Raises JobsError (or the index's own error)."""
    if out_dir is not None:
        refuse_busy(out_dir, shard)
    if jobfile.invalid and not options.skip_invalid:
        n = len(jobfile.invalid)
        raise JobsError(f"{n} invalid line{'s' if n > 1 else ''} in {jobfile.path}; fix them or pass --skip-invalid")
    if not jobfile.jobs:
        raise JobsError(f"{jobfile.path}: no valid jobs ({len(jobfile.invalid)} invalid lines)")
    if options.dataset and not os.path.isdir(options.dataset):
        raise JobsError(f"--dataset {options.dataset}: no such folder; give an image folder or leave it out")
    if any(j.config.space.needs_index for j in jobfile.jobs):
        if not options.index_dir:
            raise JobsError("patch-mode jobs need an index (-i/--index); build one with `patchcollide index build`")
        PatchIndex(options.index_dir).close()  # a bad index fails in a second


def config_key(config: dict) -> str:
    """A config as JSON without the device: a run made on another device still counts."""
    return canonical({k: v for k, v in config.items() if k != "device"})


def job_words(msg: str) -> str:
    """A run's message in a job file's words: the options that name a job's keys (``--source``,
    ``--min-steps``) become the keys (``"source"``, ``"min_steps"``); other options (the batch's
    own, such as --weights) stay."""
    keys = ["source", "target"] + [f.name for f in dataclasses.fields(CollideConfig)]
    for key in sorted(keys, key=len, reverse=True):
        flag = "-k" if key == "k" else "--" + key.replace("_", "-")
        msg = re.sub(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", f'"{key}"', msg)
    return msg


class BatchFolder:
    """The job state and files of one batch folder (see the module docstring). ``identity(job)``:
    the model identity a finished job must have been made with; ``model``: the batch's model
    identity for batch.json (set once the model is loaded); ``options``: what batch.json records
    as the batch's options."""

    def __init__(self, jobfile: JobFile, out_dir: str, options: dict, identity: Callable[[Job], dict],
                 index_dir: str | None, fingerprint_model: list):
        self.jobfile, self.out_dir = jobfile, os.path.abspath(out_dir)
        self.options, self.identity = options, identity
        self.index_dir, self.fingerprint_model = index_dir, fingerprint_model
        self.model: dict | None = None
        self.seconds: dict[str, float] = {}  # measured in this process, by job id
        self._reports: dict = {}
        self._versions: dict | None = None

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
                "index": self.index_dir if job.config.space.needs_index else None}

    def is_done(self, job: Job) -> bool:
        d = self.job_dir(job)
        rep = self._report(d)
        want = self.expected_inputs(job)  # the files; inputs.transform follows from them, the config and the model
        try:
            ok = (rep is not None and rep.get("kind") == "patchcollide-run"
                  and config_key(rep["config"]) == config_key(dataclasses.asdict(job.config))
                  and {k: rep["inputs"].get(k) for k in want} == want
                  and rep.get("model") == self.identity(job)
                  and (job.samples == 0 or polytope_samples(rep) == job.samples))
        except (KeyError, TypeError, AttributeError):
            return False
        return ok and all(os.path.isfile(os.path.join(d, f))
                          for f in ["state.npz", *(f"vertex_{i}.png" for i in range(job.config.vertices))])

    def fingerprint(self, job: Job) -> str:
        """What a failure record belongs to: a job line changed since it failed is pending again."""
        what = {"config": config_key(dataclasses.asdict(job.config)), "inputs": self.expected_inputs(job),
                "samples": job.samples, "model": self.fingerprint_model}
        return hashlib.sha256(canonical(what).encode()).hexdigest()[:16]

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
                self.record_failure_here(job, exc, seconds, scratch, tb)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            lock.release()

    def record_failure_here(self, job: Job, exc: BaseException, seconds: float, scratch: str,
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
        msg = job_words(msg)
        # a user error's message stands alone; a bug keeps its class name (IndexError_ is ours, not for users)
        error = msg if isinstance(exc, PatchcollideError) and msg else (
            f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__)
        rec = {"id": job.id, "line": job.line, "out": job.out, "error": error, "traceback": tb_rel, "seconds": round(seconds, 3),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "fingerprint": self.fingerprint(job)}
        write_json(os.path.join(d, job.out + ".json"), rec, tmp=os.path.join(scratch, job.out + ".json"))
        log.warning("job %s (line %d) failed: %s", job.id, job.line, rec["error"])

    def forget_failure(self, job: Job) -> None:
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
        elif st == "pending" and os.path.isfile(os.path.join(self.checkpoint_dir(job), CHECKPOINT)):
            at = saved_step(self.checkpoint_dir(job))  # stopped mid-job: it resumes from there
            if at is not None:
                e.update(status="interrupted", step=at[0], steps=at[1])
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
                "model": self.model, "versions": self._versions,
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
