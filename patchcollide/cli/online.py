"""Online commands: ``collide`` and ``sample``."""
from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import typing

import click
from click.core import ParameterSource

from ..engine.checkpoints import EVERY
from ..core.formats import INDEX_DIR
from ..engine.config import CollideConfig, CollideError
from ..models.names import check_model_name
from ..runs.inputs import JudgeOptions, NetOptions, SampleConfig
from ..runs.report import verdict
from .common import Progress, UserError, config_options, flag_of, show_progress, user_errors, weights_option


def print_vertices(report: dict) -> None:
    """The per-vertex table: float metrics beside the PNG read back from disk, the push on each
    vertex's own unit against the target's value there, and the mixing (patch mode)."""
    f, p = report["vertices"]["float"], report["vertices"]["png"]
    mix = report["vertices"].get("mixing") or {}
    zt = report["target"].get("unit_values") or [float("nan")] * len(f["rel_error"])
    if report.get("notice"):
        click.echo(f"NOTE: {report['notice']}")
    click.echo(f"target class {report['target']['label']} (p={report['target']['top_prob']:.3f}), "
               f"{report['target']['n_active']}/{report['target']['dim']} units active; "
               f"{report['steps']} steps, {report['seconds']:.1f} s (the verdict line below says what it came to)")
    head = (f"{'vertex':>6} {'unit':>5} {'z_t[u]':>7} {'z[u]':>7} {'push':>5} {'lowest':>6} {'rel.err':>8} "
            f"{'png':>8} {'inact>0':>7} {'top1':>5} {'p(top1)':>7}")
    if mix:
        head += f" {'sharp':>5} {'srcs':>5} {'argmax':>8}"
    dsrc = (report.get("distances") or {}).get("vertex_source_l2")
    if dsrc:
        head += f" {'L2 src':>7}"
    judge = report.get("judge")
    if judge:
        head += f" {'judge':>5} {'p':>5}"
    click.echo(head)
    for i in range(len(f["rel_error"])):
        line = (f"{i:>6} {f['unit'][i]:>5} {zt[i]:>7.3f} {p['unit_value'][i]:>7.3f} {p['push'][i]:>5.2f} "
                f"{'yes' if p['own_unit_lowest'][i] else 'no':>6} {f['rel_error'][i]:>8.2e} {p['rel_error'][i]:>8.2e} "
                f"{p['n_inactive_positive'][i]:>7} {p['top1'][i]:>5} {p['top1_prob'][i]:>7.3f}")
        if mix:
            line += f" {mix['sharpness'][i]:>5.2f} {mix['sources'][i]:>5.2f} {mix['argmax_rel_error'][i]:>8.2e}"
        if dsrc:
            line += f" {dsrc[i]:>7.1f}"
        if judge:
            jv = judge["vertices"]
            line += f" {jv['class'][i]:>5} {jv['prob'][i]:>5.2f}"
        click.echo(line)
    click.echo("push: z[u] / z_t[u], the vertex's own unit against the target's value (2 = twice as far below zero); "
               "lowest: below every other vertex there" + ("; sharp: mean largest mixing weight, srcs: mean "
                                                            "exp(entropy), argmax: error of the pure composition"
                                                            if mix else ""))
    mpl = report["vertices"].get("mean_pairwise_l2")
    click.echo((f"mean pairwise L2 between vertices: {mpl:.1f} (0..255 units at {report['vertices']['size']}^2 x 3)"
                if isinstance(mpl, (int, float)) else "mean pairwise L2 between vertices: none (one vertex)")
               + ("; L2 src: each vertex's distance to the source" if dsrc else ""))
    ext = report["vertices"].get("extent")
    if ext and len(ext.get("pairs_block_l2") or []):
        click.echo(f"extent: {ext['extent']:.3f} (the closest two vertices in the 7 x 7 block-mean view, over the "
                   "source-target distance there)")
    if judge:
        click.echo(f"judge {judge['model']['arch']}: source read as {judge['source']['class']} "
                   f"(p={judge['source']['prob']:.3f}), target as {judge['target']['class']} "
                   f"(p={judge['target']['prob']:.3f}); {judge['n_reads_as_source']}/{len(judge['vertices']['class'])} "
                   "vertices read as the source")


def print_polytope(check: dict, notice: str | None = None) -> None:
    if notice:
        click.echo(f"NOTE: {notice}")
    click.echo(f"polytope: {check['samples']} Dirichlet(1) samples, {100 * check['share_target_class']:.1f}% in the target's "
               f"class {check['target_class']}" + (f" ({check['target_class_name']})" if check.get("target_class_name") else "")
               + f"; top-class prob samples {check['mean_top_prob_samples']:.3f} / target "
               f"{check['top_prob_target']:.3f}; rel. fc6 error mean {check['rel_error_mean']:.2e}, "
               f"max {check['rel_error_max']:.2e}")
    if "share_target_close" in check:
        click.echo(f"fooling: {100 * check['share_target_close']:.1f}% of samples in the target's class with a top-class "
                   f"prob. within {check['prob_gap']:g} of the target's (largest gap {check['max_prob_gap']:.3g})"
                   + ("" if check["fools_net"] else "; NOT every sample"))
    if "judge_share_source" in check:
        click.echo(f"judge: {100 * check['judge_share_source']:.1f}% of samples read as the source's class "
                   f"{check['judge_source_class']} (mean p {check['judge_mean_source_prob']:.3f})")
    ds = check.get("dataset_mean_pairwise_l2")
    vpl = check.get("vertex_mean_pairwise_l2")
    click.echo(f"distances: vertices {f'{vpl:.1f}' if isinstance(vpl, (int, float)) else 'none (one vertex)'}"
               + (f" vs dataset images {ds:.1f}" if ds is not None else "") + f" ({check['units']})")


class Bar(Progress):
    """collide's progress(step, total, loss, worst): Progress over the steps, with the loss and
    the worst vertex's error as the bar's label or at the end of the ticker's line."""

    def __init__(self, enabled: bool):
        super().__init__("step", enabled, unit="steps")

    def __call__(self, step: int, total: int, loss: float, worst: float) -> None:
        super().__call__(step, total, f"loss {loss:.3g} worst rel.err {worst:.2e}")


def parse_pairs(field: str, values: tuple[str, ...]) -> tuple:
    """Repeated ``A:B`` values of a tuple[tuple[A, B], ...] field (``--prune 0.33:8``); 'none'
    alone: the empty tuple. A one-line UserError otherwise."""
    if values == ("none",):
        return ()
    a_type, b_type = typing.get_args(typing.get_args(typing.get_type_hints(CollideConfig)[field])[0])
    out = []
    for text in values:
        try:
            a, b = text.split(":")
            out.append((a_type(a), b_type(b)))
        except ValueError:
            raise UserError(f"{flag_of(field)} {text!r}: give {PAIR_EXAMPLES[field]}, or none") from None
    return tuple(out)


PAIR_EXAMPLES = {"prune": "SHARE:KEEP, e.g. 0.33:8 (at a third of the steps keep 8 candidates per pixel)",
                 "objective_options": "NAME:VALUE, e.g. scale:2 (an option of the --objective and a number)",
                 "term_options": "TERM.NAME:VALUE, e.g. brightness.weight:2 (an option of a term in --terms and a "
                                 "number)"}


RUN_OPTIONS = ("source", "target", "out", "index_dir", "arch", "layer", "weights", "overwrite", "strict", "resume",
               "checkpoint_every", "judge", "judge_model")  # not config fields
RESUME_KEEPS = ("resume", "checkpoint_every", "strict", "overwrite")  # the options --resume takes; the rest come from the run
NOT_CONVERGED_EXIT = 3  # collide --strict on a run that did not meet --tol


@click.command()
@click.option("--source", type=click.Path(), help="Image whose locations the patches are retrieved for.  [required unless --resume]")
@click.option("--target", type=click.Path(), help="Image to collide with (may be the source).  [required unless --resume]")
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Run directory to write.  [required unless --resume]")
@click.option("--resume", type=click.Path(file_okay=False), metavar="RUN",
              help="Continue the interrupted or killed run that was writing RUN, from its checkpoint "
                   "(RUN.partial/), with the inputs and settings it started with.")
@click.option("--checkpoint-every", default=EVERY, show_default=True, type=click.IntRange(min=0),
              help="Steps between checkpoints (also saved after the last step and on Ctrl-C / SIGTERM; 0: only then).")
@click.option("-i", "--index", "index_dir", default=INDEX_DIR, show_default=True, type=click.Path(file_okay=False),
              help="Patch index (patch mode).")
@config_options(NetOptions)
@weights_option()
@config_options(CollideConfig)
@config_options(JudgeOptions)
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory (only once the new run is complete); "
              "with --resume: replace a complete run that another process wrote at RUN meanwhile.")
@click.option("--strict", is_flag=True,
              help=f"Exit with code {NOT_CONVERGED_EXIT} when a vertex misses --tol (the run is still written).")
@click.pass_context
def collide(ctx, source, target, out, index_dir, arch, layer, weights, overwrite, strict, resume, checkpoint_every,
            judge, judge_model, **fields):
    """Find polytope vertices whose layer activation collides with TARGET's.

    A run saves a checkpoint every --checkpoint-every steps and on Ctrl-C / SIGTERM;
    `patchcollide collide --resume RUN` goes on from it and ends as the run would have."""
    if resume:
        given = [p.opts[-1] for p in ctx.command.params if p.name not in RESUME_KEEPS
                 and ctx.get_parameter_source(p.name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]
        if given:
            raise UserError(f"--resume {resume} goes on with the run's own inputs and settings; leave out "
                            f"{', '.join(given)}")
    else:
        missing = [f"--{n}" for n, v in (("source", source), ("target", target), ("out", out)) if not v]
        if missing:
            raise UserError(f"missing {', '.join(missing)}; give --source, --target and --out, or --resume RUN "
                            "to continue an interrupted run")
    bar = Bar(show_progress(ctx))
    if resume:
        from ..runs.inputs import check_resume  # no torch

        with user_errors():
            check_resume(resume)  # a checkpoint to go on from; the checkpoint itself is torch's to read
            from ..runs.run import resume_collide  # torch, from here on

            try:
                report = resume_collide(resume, progress=bar, checkpoint_every=checkpoint_every, overwrite=overwrite,
                                        on_resume=lambda step, steps: click.echo(
                                            f"resuming {resume} from step {step}/{steps}", err=True))
            finally:
                bar.close()
        finish(report, resume, strict, report["config"]["tol"])
        return
    with user_errors():
        from ..runs.inputs import check_collide, check_judge, check_k, store_size  # no torch: the inputs come first

        hints = typing.get_type_hints(CollideConfig)
        for name, value in list(fields.items()):
            if typing.get_origin(hints[name]) is tuple:  # click gives lists and () for an absent repeated option
                if typing.get_origin(typing.get_args(hints[name])[0]) is tuple:  # repeated A:B pairs
                    fields[name] = parse_pairs(name, value) if value else CollideConfig.__dataclass_fields__[name].default
                else:
                    fields[name] = tuple(value)

        try:
            cfg = CollideConfig(**fields)
        except CollideError as e:  # -k beyond the store says that before it talks of memory
            if e.field == "k" and fields.get("mode") != "pixel" and (n := store_size(index_dir)) is not None:
                check_k(fields["k"], n, index_dir)
            raise
        for field, why in cfg.doubts() if show_progress(ctx) else []:  # -q: errors only
            click.echo(f"warning: {flag_of(field)} {why}", err=True)
        check_collide(source, target, out, cfg, index_dir, overwrite)  # run_collide's checks that need no model
        check_model_name(arch, "--model")
        check_judge(judge, judge_model)
        from ..models.judge import load_judge  # torch, from here on
        from ..runs.run import run_collide

        the_judge = load_judge(judge, judge_model) if judge else None  # before any work: a bad file fails now
        try:
            report = run_collide(source, target, out, cfg, arch=arch, layer=layer, weights=weights,
                                 index_dir=index_dir, overwrite=overwrite, progress=bar,
                                 checkpoint_every=checkpoint_every, judge=the_judge)
        finally:
            bar.close()
    finish(report, out, strict, cfg.tol)


FALLING = 0.10  # the worst error still fell by more than this share over the last quarter: more steps help


def convergence_hint(history: dict, mode: str) -> str:
    """What this run's own history says to change when it missed tol: the worst relative error
    over the last quarter of the steps (the median of its first and last fifths, so one noisy
    step decides nothing). Still falling by more than FALLING: more steps. Flat: more steps will
    not help; the constraints (push, least change, and in patch mode the candidates) hold it."""
    worst = [w for w in history.get("worst_rel_error", []) if isinstance(w, (int, float)) and w == w]  # null: NaN
    if len(worst) < 8:
        return f"it ran only {len(worst)} step{'' if len(worst) == 1 else 's'}: give more --steps"
    q = len(worst) // 4
    edge = max(1, q // 5)
    first, last = statistics.median(worst[-q:][:edge]), statistics.median(worst[-edge:])
    if last < (1 - FALLING) * first:
        return (f"it was still falling over the last {q} steps ({first:.2e} -> {last:.2e}): give more --steps, "
                "or a looser --tol")
    held = "the push (--push-margin), the least-change term (--least-change)"
    if mode == "patches":
        held += ", the patch constraint (more candidates -k, --slots, or a larger store)"
    fell = 1 - last / first if first > 0 else 0.0
    how = (f"it fell only {100 * fell:.0f}% over the last {q} steps ({first:.2e} -> {last:.2e}), so more steps would "
           "help little" if fell >= 0.01 else
           f"it was flat over the last {q} steps ({first:.2e} -> {last:.2e}), so more steps will not help")
    return f"{how}: loosen {held}, or take a looser --tol"


def finish(report: dict, out: str, strict: bool, tol: float) -> None:
    """A finished run's table, and the warning (and --strict's exit code) when it missed tol."""
    print_vertices(report)
    r = report.get("retrieval")
    if r:
        click.echo(f"retrieval: source patches {r['source_mean_distance']:.0f} from their neighbours, stored patches "
                   f"{r['store_typical_distance']:.0f} from theirs ({r['ratio']:.2f}x; {r['store_patches']:,} patches "
                   "in the store)")
    click.echo(f"wrote {out}/ (contact_sheet.png, vertex_*.png, indicator.png, loss.png, report.json); its page: "
               f"patchcollide report {out}")
    click.echo(f"verdict: {verdict(report)[1]}")
    if not report["converged"]:
        worst = max(report["vertices"]["png"]["rel_error"])
        hint = convergence_hint(report.get("history", {}), report.get("config", {}).get("mode", "patches"))
        click.echo(f"warning: not converged: worst PNG relative error {worst:.2e} > --tol {tol:g} after "
                   f"{report['steps']} steps; {hint}", err=True)
        if strict:
            sys.exit(NOT_CONVERGED_EXIT)


@click.command()
@click.option("-o", "--out", "run_dir", type=click.Path(file_okay=False), metavar="RUN",
              help="The run to check (collide's --out); its report.json gets the polytope.  [required]")
@config_options(SampleConfig)
@click.option("--dataset", default=None, type=click.Path(file_okay=False),
              help="Image folder for the mean distance between dataset images [default: the run index's images].")
@config_options(JudgeOptions, shown={"judge": "the run's own judge, if any"})
@click.pass_context
def sample(ctx, run_dir, dataset, judge, judge_model, **fields):
    """Check the polytope of a finished run: Dirichlet(1) combinations of its vertices.

    The run is given with --out RUN, as collide names it."""
    if run_dir is None:
        raise UserError("no run given; name it with --out RUN (the directory collide wrote)")
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir!r} is not a run directory; give one written by `patchcollide collide`")
    with user_errors():
        from ..runs.inputs import check_complete, check_judge, dataset_images, dataset_paths, read_report

        settings = SampleConfig(**fields)  # the settings, the run and the dataset, before torch loads
        report = read_report(run_dir)
        config = check_complete(run_dir, report)
        paths = dataset_paths(dataset, index_dir=report["inputs"].get("index"))
        images = dataset_images(paths, config.size, seed=settings.seed) if paths else None
        check_judge(judge, judge_model)
        from ..models.judge import load_judge  # torch, from here on
        from ..runs.run import run_sample

        the_judge = load_judge(judge, judge_model) if judge else None
        with Progress("polytope samples", show_progress(ctx)) as bar:
            report = run_sample(run_dir, **dataclasses.asdict(settings), dataset_images=images, progress=bar,
                                judge=the_judge)
    print_polytope(report["polytope"], report.get("notice"))
    click.echo(f"updated {os.path.join(run_dir, 'report.json')}")
    click.echo(f"verdict: {verdict(report)[1]}")
