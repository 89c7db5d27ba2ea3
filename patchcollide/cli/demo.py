"""``patchcollide demo``: the embedded default, end to end."""
from __future__ import annotations

import click

from ..demo import run_demo
from .common import Progress, show_progress, user_errors


@click.command()
@click.option("-i", "--index", "index_dir", default="index", show_default=True, type=click.Path(file_okay=False),
              help="Where the embedded index is built (once).")
@click.option("-o", "--out", "out_dir", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.pass_context
def demo(ctx, index_dir, out_dir):
    """Build the index from scikit-image's sample photos and search a held-out photo."""
    with user_errors(), Progress("extracting sample photos", show_progress(ctx)) as bar:
        r = run_demo(index_dir, out_dir, progress=bar)
    s = r.seconds
    click.echo(f"index   {r.index_dir}/: {r.n_patches} patches, {r.factory}  "
               f"(extract {s['extract']:.1f} s, index {s['index']:.1f} s)")
    click.echo(f"search  {r.n_locations} locations x {r.k} neighbours in {s['search']:.1f} s; nearest L2 "
               f"median {r.median_nearest_l2:.0f}, mean {r.mean_nearest_l2:.0f} (0..255 pixel units)")
    click.echo(f"mosaic  {r.mosaic}")
