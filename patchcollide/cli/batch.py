"""The ``batch`` command: many collide + sample jobs from a JSON Lines file into one directory."""
from __future__ import annotations

import os
import textwrap
import time

import click

from ..batch.events import BatchEvents
from ..batch.folder import BatchOptions, check_batch
from ..batch.jobfile import JobsError, config_fields, parse_shard, read_jobs
from ..core.formats import RANDOM_NOTICE
from ..core.progress import eta_seconds, hms
from ..engine.config import MAX_SAMPLES, SAMPLES
from ..models.names import check_model_name
from ..executors import make_executor
from .common import Progress, UserError, config_options, executor_options, show_progress, user_errors


class _BatchProgress(BatchEvents):
    """A bar over this process's jobs with ETA, labelled with the running jobs (the step of a
    single one) and the failures so far, on a terminal; elsewhere one line per finished job, so
    logs stay readable, and a single running job's steps (both Progress). The same for both
    executors."""

    def __init__(self, enabled: bool):
        self.enabled, self.done, self.total, self.t0 = enabled, 0, 0, time.time()
        self.jobs = Progress("", False)
        self.steps = Progress("", False)  # off a terminal: the running job's steps, at most every LOG_EVERY s
        self.running: list[str] = []
        self.failed, self.last_render, self.at = 0, 0.0, ""

    def start(self, todo) -> None:
        self.total, self.t0 = len(todo), time.time()
        self.jobs = Progress("", self.enabled and bool(todo), lines=False)  # the bar; its own lines below
        self._render()

    def _render(self) -> None:
        names = ", ".join(self.running[:3]) + (f" +{len(self.running) - 3}" if len(self.running) > 3 else "")
        label = f"running {names}{self.at}" if self.running else ""
        if self.failed:
            label += f"{'; ' if label else ''}{self.failed} failed"
        self.jobs(self.done, self.total, label)
        self.last_render = time.time()

    def job_start(self, job) -> None:
        self.running.append(job.id)
        self.at = ""
        self.steps = Progress(f"  {job.id} step", self.enabled and self.jobs.ticker is not None, unit="steps")
        self._render()

    def step(self, step, total, loss, worst) -> None:
        if len(self.running) == 1 and step < total:
            self.steps(step, total, f"worst rel.err {worst:.2e}")
        if self.jobs.bar is not None and len(self.running) == 1 and time.time() - self.last_render > 0.5:
            self.at = f" step {step}/{total} worst rel.err {worst:.2e}"
            self._render()

    def job_end(self, job, status, seconds) -> None:
        self.done += 1
        self.failed += status == "failed"
        if job.id in self.running:
            self.running.remove(job.id)
        self.at = ""
        if self.jobs.ticker is None:  # a terminal: the bar
            self._render()
        elif self.enabled:
            left = eta_seconds(self.done, self.total, time.time() - self.t0)
            eta = f", ETA {hms(left)}" if left is not None else ""
            click.echo(f"[{self.done}/{self.total}] {job.id}: {status} ({seconds:.1f} s{eta})", err=True)

    def close(self) -> None:
        self.jobs.close()


def _n(k: int, what: str) -> str:
    return f"{k} {what}" + ("" if k == 1 else "s")


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def print_summary(entries: list[dict]) -> None:
    """One row per job: id, status, seconds, converged (every vertex within tol), worst relative
    error (PNGs), smallest push, sharpness, polytope share, vertex L2."""
    w = max([len("id")] + [len(str(e["id"] or f"line {e['line']}")) for e in entries])
    w = min(w, 40)
    judged = any((e["metrics"] or {}).get("judge_reads_source") is not None for e in entries)
    click.echo(f"{'id':<{w}} {'status':<11} {'seconds':>8} {'conv.':>5} {'rel.err':>9} {'push':>5} {'sharp':>5} {'share':>6} "
               f"{'vertex L2':>9}" + (f" {'fooling':>7} {'judge':>5}" if judged else ""))
    for e in entries:
        m = e["metrics"] or {}
        share = m.get("share_target_class")
        name = str(e["id"] if e["id"] is not None else f"line {e['line']}")
        conv = {True: "yes", False: "NO"}.get(m.get("converged"), "-")
        click.echo(f"{name[:w]:<{w}} {e['status']:<11} {_num(e['seconds'], '8.1f'):>8} {conv:>5} "
                   f"{_num(m.get('worst_rel_error_png'), '9.2e'):>9} {_num(m.get('min_push'), '5.2f'):>5} "
                   f"{_num(m.get('mean_sharpness'), '5.2f'):>5} "
                   f"{('-' if share is None else f'{100 * share:.0f}%'):>6} "
                   f"{_num(m.get('mean_pairwise_l2'), '9.1f'):>9}"
                   + (f" {_pct(m.get('share_target_close')):>7} {_pct(m.get('judge_reads_source')):>5}" if judged else ""))
    if judged:
        click.echo("fooling: samples in the target's class with top p within 0.01 of the target's; judge: vertices the "
                   "judge reads as the source")


BATCH_HELP = """Run many collide + sample jobs from JOBS.jsonl (one JSON object per line) into --out.

\b
Keys per line: id (required; also the output name), source, target (required; relative
to the job file's folder), out, samples, and any of collide's options with "_" for "-"
(--grid-stride: "grid_stride"; pairs as arrays, "loss_early": [1, 0.3]):
{config_keys}.

The whole file is checked first: without --skip-invalid nothing runs while a line is
invalid. The model and the index are loaded once; jobs with the same target reuse its
activation. Each job is written under DIR/.tmp and renamed to DIR/<out> only when its
polytope check is done. Running the same command again skips the finished jobs and runs
the rest, failed ones included; --retry-failed runs only the failed ones. A failing job is
recorded (error in DIR/batch.json, traceback in DIR/.failed/) and the batch goes on.
A job saves a checkpoint every --checkpoint-every steps; Ctrl-C or SIGTERM saves it and
stops the batch, and the same command later goes on from it. Several processes may share one job file and DIR with --shard 1/N ... N/N; a second
process on the same DIR and shard is refused. With --executor ray the jobs run as tasks on
a Ray cluster (every node must see DIR, the index and the inputs at the same paths), each
worker keeping its model and index for its next jobs; a worker that dies is retried. Exit code 0 when every job of this shard is
done, 1 when some are not (failed, busy elsewhere), 2 for mistakes in the input.
""".format(config_keys=textwrap.fill(", ".join(config_fields()), 88))


@click.command(help=BATCH_HELP)
@click.argument("jobs_file", metavar="JOBS.jsonl", type=click.Path())
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(), help="Directory for the jobs' runs and batch.json.")
@config_options(BatchOptions, ("index_dir", "arch", "layer", "weights", "device"))
@click.option("--samples", default=SAMPLES, show_default=True, type=click.IntRange(0, MAX_SAMPLES),
              help="Polytope check size for jobs without their own \"samples\" (0: no check).")
@config_options(BatchOptions, ("dataset",))
@click.option("--shard", default=None, metavar="I/N",
              help="Run only share I of N (1-based): the job lines at positions I-1, I-1+N, ... of the file.")
@click.option("--retry-failed", is_flag=True, help="Run only the jobs whose recorded status is failed.")
@config_options(BatchOptions, ("skip_invalid", "checkpoint_every", "judge", "judge_model"))
@executor_options
@click.option("--gpus-per-job", default=None, type=click.FloatRange(min=0),
              help="GPUs each job asks Ray for (0.5: two jobs share one) [default: 1 on a cluster with GPUs, else 0].")
@click.option("--cpus-per-job", default=None, type=click.FloatRange(min=0, min_open=True),
              help="CPUs each job asks Ray for; also its torch threads [default: 1].")
@click.pass_context
def batch(ctx, jobs_file, out_dir, samples, shard, retry_failed, executor, address, gpus_per_job, cpus_per_job,
          **fields):
    progress = _BatchProgress(show_progress(ctx))
    with user_errors():
        try:
            shard_ = parse_shard(shard)
            if os.path.exists(out_dir) and not os.path.isdir(out_dir):
                raise JobsError(f"--out {out_dir} is a file; give a directory for the batch's outputs")
            options = BatchOptions(**fields)
            jobfile = read_jobs(jobs_file, out_dir, samples=samples, device=options.device)
            for line, notice in jobfile.notices:
                click.echo(f"warning: {jobs_file}:{line}: {notice}", err=True)
            if jobfile.invalid and not options.skip_invalid:
                n = len(jobfile.invalid)
                if n == 1:  # one line says it all
                    line, msg = jobfile.problems()[0]
                    skip = " or pass --skip-invalid to run the others" if jobfile.jobs else ""
                    raise UserError(f"{jobs_file}:{line}: {msg}; fix that line{skip}")
                for line, msg in jobfile.problems():
                    click.echo(f"{jobs_file}:{line}: {msg}", err=True)
                raise UserError(f"{n} invalid lines; fix them or pass --skip-invalid")
            from ..runs.inputs import check_judge

            check_model_name(options.arch, "--model")
            check_judge(options.judge, options.judge_model)
            check_batch(jobfile, options, out_dir, shard_)  # the inputs, before torch loads
            runs_on = make_executor(executor, address, gpus_per_job, cpus_per_job)
            from ..batch.runner import run_batch  # torch, from here on

            res = run_batch(jobfile, out_dir, options, shard=shard_, retry_failed=retry_failed, events=progress,
                            executor=runs_on)
        finally:
            progress.close()
    for line, msg in jobfile.problems() if options.skip_invalid else []:
        click.echo(f"{jobs_file}:{line}: skipped: {msg}", err=True)
    if (res.batch.get("model") or {}).get("kind") == "random":
        click.echo(f"NOTE: {RANDOM_NOTICE}")
    print_summary(res.mine)
    click.echo(f"wrote {os.path.join(out_dir, 'batch.json')}")
    counts: dict[str, int] = {}
    for e in res.mine:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    valid = sum(n for s, n in counts.items() if s != "invalid")
    where = "" if shard_ is None else f" of shard {shard_[0]}/{shard_[1]}"
    if counts.get("done", 0) == valid:
        skipped = f" ({_n(counts['invalid'], 'invalid line')} skipped)" if counts.get("invalid") else ""
        click.echo(f"all {_n(valid, 'job')}{where} done, {len(res.ran)} run now{skipped}")
        return
    parts = []
    if counts.get("failed"):
        tracebacks = os.path.join(out_dir, ".failed")
        parts.append(f"{counts['failed']} failed (errors in batch.json, tracebacks in {tracebacks}); "
                     "rerun with --retry-failed")
    if counts.get("busy"):
        parts.append(f"{counts['busy']} busy (run by another process now)")
    stopped = [e for e in res.mine if e["status"] == "interrupted"]
    if stopped:
        at = ", ".join(f"{e['id']} at step {e['step']}/{e['steps']}" for e in stopped[:3]) + (" ..." if len(stopped) > 3 else "")
        parts.append(f"{len(stopped)} interrupted ({at}; each resumes from its checkpoint when the batch runs again)")
    if counts.get("pending"):
        hint = "; run without --retry-failed to run them" if retry_failed else ""
        parts.append(f"{counts['pending']} pending{hint}")
    click.echo(f"{counts.get('done', 0)} of {_n(valid, 'job')}{where} done; " + "; ".join(parts))
    ctx.exit(1)
