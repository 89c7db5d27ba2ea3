"""``patchcollide demo``: the embedded default, end to end."""
from __future__ import annotations

import click

import pathlib

from click.core import ParameterSource

from ..engine.config import SAMPLES
from ..world.config import DemoConfig, world_verdict
from ..runs.report import verdict, write_html
from .common import Progress, config_options, show_progress, user_errors
from .online import Bar, print_polytope, print_vertices


@click.command()
@config_options(DemoConfig)
@click.pass_context
def demo(ctx, **fields):
    """Build the index from scikit-image's sample photos, collide two of them, check the polytope
    (--world digits: the same path on the trained digits world, judged by networks)."""
    with user_errors():
        cfg = DemoConfig(**fields)
    out_dir = cfg.out
    if cfg.world == "digits":  # its own polytope check's size unless --samples is given
        given = ctx.get_parameter_source("samples") in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
        return _digits(ctx, cfg.world_dir, out_dir, cfg.pair, cfg.device, cfg.steps, cfg.samples if given else SAMPLES)
    from ..demo import run_demo  # torch, from here on

    bar = Bar(show_progress(ctx))
    with user_errors(), Progress("extracting sample photos", show_progress(ctx)) as xbar:
        try:
            r = run_demo(cfg.index_dir, out_dir, size=cfg.size, steps=cfg.steps, vertices=cfg.vertices,
                         samples=cfg.samples, weights=cfg.weights, device=cfg.device, progress=xbar,
                         collide_progress=bar)
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
