"""``patchcollide demo``: the embedded default, end to end."""
from __future__ import annotations

import click

from .common import Progress, deprecated, show_progress, user_errors, weights_option
from .online import Bar, print_polytope, print_vertices


@click.command()
@click.option("-i", "--index", "index_dir", default="index", show_default=True, type=click.Path(file_okay=False),
              help="Where the embedded index is built (once).")
@click.option("-o", "--out", "out_dir", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--size", default=128, show_default=True, type=int, help="Input side of the collision (224: paper).")
@click.option("--steps", default=None, type=int, help="At most [default: collide's default].")
@click.option("--vertices", default=5, show_default=True, type=int)
@click.option("--samples", default=200, show_default=True, type=int, help="Polytope samples.")
@click.option("--n", "n_deprecated", default=None, type=int, hidden=True, help="Deprecated: --samples.")
@weights_option()
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--world", "world_name", type=click.Choice(["photos", "digits"]), default="photos", show_default=True,
              help="photos: scikit-image's photos at VGG-16 (random weights here); digits: the trained digits "
                   "world (real MNIST, a trained net and a judge; built into --world-dir once).")
@click.option("--world-dir", default="worlds/digits", show_default=True, type=click.Path(file_okay=False),
              help="Where the digits world is built (once).")
@click.option("--pair", default=0, show_default=True, type=int, help="Digits world: which of its 45 test pairs.")
@click.pass_context
def demo(ctx, index_dir, out_dir, size, steps, vertices, samples, n_deprecated, weights, device, world_name, world_dir,
         pair):
    """Build the index from scikit-image's sample photos, collide two of them, check the polytope
    (--world digits: the same path on the trained digits world, judged by networks)."""
    if world_name == "digits":
        return _digits(ctx, world_dir, out_dir if out_dir != "runs/demo" else "runs/world-demo", pair, device, steps,
                       samples if samples != 200 else 2000)
    if n_deprecated is not None:
        deprecated("--n", "--samples")
        samples = n_deprecated
    from ..demo import run_demo  # torch, from here on

    bar = Bar(show_progress(ctx))
    with user_errors(), Progress("extracting sample photos", show_progress(ctx)) as xbar:
        try:
            r = run_demo(index_dir, out_dir, size=size, steps=steps, vertices=vertices, samples=samples,
                         weights=weights, device=device, progress=xbar, collide_progress=bar)
        finally:
            bar.close()
    s = r.seconds
    click.echo(f"index     {r.index_dir}/: {r.n_patches} patches, {r.factory}  "
               f"(extract {s['extract']:.1f} s, index {s['index']:.1f} s)")
    click.echo(f"search    {r.n_locations} locations x {r.k} neighbours in {s['search']:.1f} s; nearest L2 "
               f"median {r.median_nearest_l2:.0f}, mean {r.mean_nearest_l2:.0f} (0..255 pixel units)")
    click.echo(f"collide   astronaut -> chelsea, patch mode, {s['collide']:.1f} s; sample {s['sample']:.1f} s")
    print_vertices(r.report)
    print_polytope(r.report["polytope"], r.report.get("notice"))
    click.echo(f"pictures  {r.mosaic}, {r.run_dir}/contact_sheet.png, {r.run_dir}/loss.png")


def _digits(ctx, world_dir, out_dir, pair, device, steps, samples):
    from ..papers.world import run_world_demo, success  # torch, from here on

    bar = Bar(show_progress(ctx))
    with user_errors():
        try:
            reports = run_world_demo(world_dir, out_dir, pair=pair, device=device, steps=steps, samples=samples,
                                     progress=lambda m: click.echo(m, err=True), collide_progress=bar)
        finally:
            bar.close()
    for mode, report in reports.items():
        click.echo(f"== {mode} mode: {out_dir}/{mode}/")
        print_vertices(report)
        print_polytope(report["polytope"], report.get("notice"))
        click.echo(f"verdict: {'SUCCESS' if success(report) else 'not a success'} (every sample fools digits_vgg "
                   "within 0.01 of the target's probability, and >= 4 of 5 vertices read as the source)")
