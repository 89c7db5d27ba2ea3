"""Online commands: ``collide`` and ``sample``."""
from __future__ import annotations

import os
import sys

import click

from ..collide import CollideConfig
from ..runs import dataset_images, folder_image_paths, read_report, run_collide, run_sample, store_image_paths
from .common import UserError, show_progress, user_errors


def print_vertices(report: dict) -> None:
    """The per-vertex table: float metrics beside the PNG read back from disk."""
    f, p = report["vertices"]["float"], report["vertices"]["png"]
    if report.get("notice"):
        click.echo(f"NOTE: {report['notice']}")
    click.echo(f"target class {report['target']['label']} (p={report['target']['top_prob']:.3f}), "
               f"{report['target']['n_active']}/{report['target']['dim']} units active; "
               f"{report['steps']} steps, converged={report['converged']}, {report['seconds']:.1f} s")
    click.echo(f"{'vertex':>6} {'unit':>6} {'rel.err':>9} {'rel.err(png)':>12} {'max|dz| act':>11} "
               f"{'inact>0':>7} {'z[unit]':>9} {'top1':>5} {'p(top1)':>8}")
    for i in range(len(f["rel_error"])):
        click.echo(f"{i:>6} {f['unit'][i]:>6} {f['rel_error'][i]:>9.2e} {p['rel_error'][i]:>12.2e} "
                   f"{p['max_abs_active'][i]:>11.3g} {p['n_inactive_positive'][i]:>7} {p['unit_value'][i]:>9.3g} "
                   f"{p['top1'][i]:>5} {p['top1_prob'][i]:>8.3f}")
    click.echo(f"mean pairwise L2 between vertices: {report['vertices']['mean_pairwise_l2']:.1f} "
               f"(0..255 units at {report['vertices']['size']}^2 x 3)")


def print_polytope(check: dict, notice: str | None = None) -> None:
    if notice:
        click.echo(f"NOTE: {notice}")
    click.echo(f"polytope: {check['n']} Dirichlet(1) samples, {100 * check['share_target_class']:.1f}% in the target's "
               f"class {check['target_class']}; top-class prob samples {check['mean_top_prob_samples']:.3f} / target "
               f"{check['top_prob_target']:.3f}; rel. fc6 error mean {check['rel_error_mean']:.2e}, "
               f"max {check['rel_error_max']:.2e}")
    ds = check.get("dataset_mean_pairwise_l2")
    click.echo(f"distances: vertices {check['vertex_mean_pairwise_l2']:.1f}"
               + (f" vs dataset images {ds:.1f}" if ds is not None else "") + f" ({check['units']})")


class _Bar:
    """Progress with the loss and the worst vertex's error: a bar on a terminal, else a line
    every tenth of the steps (so logs of batch jobs stay readable)."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.last = enabled, None, 0
        self.tty = sys.stderr.isatty()

    def __call__(self, step: int, total: int, loss: float, worst: float) -> None:
        if not self.enabled:
            return
        label = f"loss {loss:.3g} worst rel.err {worst:.2e}"
        if not self.tty:
            if step == 1 or step == total or step % max(1, total // 10) == 0:
                click.echo(f"step {step}/{total}: {label}", err=True)
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, show_eta=True, show_pos=True, file=sys.stderr)
            self.bar.__enter__()
        self.bar.label = label
        self.bar.update(step - self.last)
        self.last = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@click.command()
@click.option("--source", required=True, type=click.Path(), help="Image whose locations the patches are retrieved for.")
@click.option("--target", required=True, type=click.Path(), help="Image to collide with (may be the source).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--mode", type=click.Choice(["patches", "pixel"]), default="patches", show_default=True)
@click.option("-i", "--index", "index_dir", default="index", show_default=True, type=click.Path(file_okay=False))
@click.option("--model", "arch", default="vgg16", show_default=True, help="torchvision classifier.")
@click.option("--layer", default="fc6", show_default=True, help="fc6/fc7 (VGG, AlexNet) or a module name.")
@click.option("--weights", default="imagenet", show_default=True, help="imagenet, random (smoke runs) or a state-dict PATH.")
@click.option("--vertices", default=5, show_default=True, type=int)
@click.option("--steps", default=400, show_default=True, type=int, help="At most; stops once every vertex meets --tol.")
@click.option("--tol", default=1e-2, show_default=True, type=float, help="Relative fc6 error to stop at.")
@click.option("--lr", default=None, type=float, help="[default: 0.1 patches, 5e-3 pixel]")
@click.option("--tv", default=0.0, show_default=True, type=float, help="Total-variation weight on the mixing weights.")
@click.option("--loss", "loss_weights", nargs=2, type=float, default=(1000.0, 1.0), show_default=True,
              metavar="A B", help="Weights a, b of L+ and L-^i (the authors: 100 10, then 1000 1).")
@click.option("--objective", type=click.Choice(["paper", "post"]), default="paper", show_default=True,
              help="L+ on the target's active units (paper) or on the whole post-activation (post).")
@click.option("--min-steps", default=50, show_default=True, type=int, help="Never stop before this step.")
@click.option("--size", default=224, show_default=True, type=int, help="Input side in pixels.")
@click.option("-k", default=16, show_default=True, type=int, help="Candidates per location (patch mode).")
@click.option("--grid-stride", default=8, show_default=True, type=int)
@click.option("--init", type=click.Choice(["source", "target"]), default="source", show_default=True,
              help="Pixel mode: start from the source or from the target.")
@click.option("--first-unit", default=0, show_default=True, type=int,
              help="Skip the target's first N most negative units (more vertices of the same polytope).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory (only once the new run is complete).")
@click.pass_context
def collide(ctx, source, target, out, mode, index_dir, arch, layer, weights, vertices, steps, tol, lr, tv, size, k,
            grid_stride, init, first_unit, seed, device, overwrite, loss_weights, min_steps, objective):
    """Find polytope vertices whose layer activation collides with TARGET's."""
    bar = _Bar(show_progress(ctx))
    with user_errors():
        cfg = CollideConfig(mode=mode, vertices=vertices, steps=steps, tol=tol, lr=lr, tv=tv, size=size, k=k,
                            grid_stride=grid_stride, init=init, first_unit=first_unit, seed=seed, device=device,
                            weights_early=tuple(loss_weights), weights_late=tuple(loss_weights), min_steps=min_steps,
                            objective=objective)
        try:
            report = run_collide(source, target, out, cfg, arch=arch, layer=layer, weights=weights,
                                 index_dir=index_dir, overwrite=overwrite, progress=bar)
        finally:
            bar.close()
    print_vertices(report)
    click.echo(f"wrote {out}/ (contact_sheet.png, vertex_*.png, indicator.png, loss.png, report.json)")


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--n", default=2000, show_default=True, type=int, help="Random convex combinations.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dataset", default=None, type=click.Path(file_okay=False),
              help="Image folder for the mean distance between dataset images [default: the run index's images].")
def sample(run_dir, n, seed, batch_size, device, dataset):
    """Check the polytope of a finished run: Dirichlet(1) combinations of its vertices."""
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir!r} is not a run directory; give one written by `patchcollide collide`")
    if batch_size < 1 or seed < 0:
        raise UserError(f"--batch-size must be >= 1 and --seed >= 0, got {batch_size} and {seed}")
    with user_errors():
        report = read_report(run_dir)
        size = report["config"]["size"]
        index_dir = report["inputs"].get("index")
        paths = folder_image_paths(dataset) if dataset else (
            store_image_paths(index_dir) if index_dir and os.path.isdir(index_dir) else [])
        images = dataset_images(paths, size, seed=seed) if paths else None
        report = run_sample(run_dir, n=n, seed=seed, batch_size=batch_size, device=device, dataset_images=images)
    print_polytope(report["polytope"], report.get("notice"))
    click.echo(f"updated {os.path.join(run_dir, 'report.json')}")
