"""``patchcollide demo``: the embedded default, end to end."""
from __future__ import annotations

import click

import pathlib

from ..engine.config import DEVICES, MAX_SAMPLES
from ..world.config import DEMO_PAIR, world_verdict
from ..runs.report import verdict, write_html
from .common import Progress, show_progress, user_errors, weights_option
from .online import Bar, print_polytope, print_vertices

OUT = {"photos": "runs/demo", "digits": "runs/world-demo"}  # --out's default per --world


@click.command()
@click.option("-i", "--index", "index_dir", default="index", show_default=True, type=click.Path(file_okay=False),
              help="Where the embedded index is built (once).")
@click.option("-o", "--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Where the demo's runs and their report.html go [default: runs/demo; with --world digits: "
                   "runs/world-demo].")
@click.option("--size", default=128, show_default=True, type=int, help="Input side of the collision (224: paper).")
@click.option("--steps", default=None, type=int, help="At most [default: collide's default].")
@click.option("--vertices", default=5, show_default=True, type=int,
              help="Vertices of the polytope (photos world; the digits world runs the engine's default).")
@click.option("--samples", default=200, show_default=True, type=click.IntRange(1, MAX_SAMPLES),
              help="Polytope samples.")
@weights_option()
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Where the runs compute (auto: CUDA when present).")
@click.option("--world", "world_name", type=click.Choice(["photos", "digits"]), default="photos", show_default=True,
              help="photos: scikit-image's photos at VGG-16 (random weights here); digits: the trained digits "
                   "world (real MNIST, a trained net and a judge; built into --world-dir once).")
@click.option("--world-dir", default="worlds/digits", show_default=True, type=click.Path(file_okay=False),
              help="Where the digits world is built (once).")
@click.option("--pair", default=DEMO_PAIR, show_default=True, type=int,
              help="Digits world: which of its 45 test pairs (the default, 7 -> 2, succeeds in both modes in "
                   "benchmarks/results/bench_world-cpu.json; scripts/bench_world.py runs them all).")
@click.pass_context
def demo(ctx, index_dir, out_dir, size, steps, vertices, samples, weights, device, world_name, world_dir,
         pair):
    """Build the index from scikit-image's sample photos, collide two of them, check the polytope
    (--world digits: the same path on the trained digits world, judged by networks)."""
    out_dir = out_dir or OUT[world_name]
    if world_name == "digits":
        return _digits(ctx, world_dir, out_dir, pair, device, steps, samples if samples != 200 else 2000)
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
    click.echo(f"verdict: {verdict(r.report)[1]}")
    _page(out_dir)


def _page(out_dir: str) -> None:
    """The demo's report pages, and the command that opens them."""
    with user_errors():
        page = write_html(out_dir)
    click.echo(f"report    {pathlib.Path(page).resolve().as_uri()}  (open it: patchcollide report {out_dir} --open)")


def _digits(ctx, world_dir, out_dir, pair, device, steps, samples):
    from ..world.build import run_world_demo  # torch, from here on

    show = show_progress(ctx)
    bars = []

    def on_mode(mode, p, config):
        click.echo(f"== {mode} mode: pair {pair}, a {p['source_digit']} made to collide with a {p['target_digit']} "
                   f"at digits_vgg's fc6 ({config.vertices} vertices, at most {config.steps} steps), then "
                   f"{samples:,} polytope samples checked", err=True)
        bars[:] = [Bar(show), Progress(f"{mode}: polytope samples", show)]  # fresh clocks for each phase
        return bars[0], bars[1]

    def on_report(mode, report):
        for b in bars:
            b.close()
        click.echo(f"== {mode} mode: {out_dir}/{mode}/")
        print_vertices(report)
        print_polytope(report["polytope"], report.get("notice"))
        click.echo(f"verdict ({mode}): {world_verdict(report)}", nl=True)

    with user_errors():
        try:
            run_world_demo(world_dir, out_dir, pair=pair, device=device, steps=steps, samples=samples,
                           progress=lambda m: click.echo(m, err=True), on_mode=on_mode, on_report=on_report)
        finally:
            for b in bars:
                b.close()
    _page(out_dir)
