"""Exact collisions (Ozbulak et al. 2022): ``nullspace`` and ``nullity``."""
from __future__ import annotations

import os

import click

from ..core.files import write_json, write_text
from ..models.names import ANY_MODEL, check_model_name
from ..exact.config import SIZE, NullityConfig, NullspaceConfig, NullspaceError, check_nullspace
from .common import config_options, echo_json, show_progress, user_errors, weights_option


def _say(enabled: bool):
    return (lambda msg: click.echo(f"... {msg}", err=True)) if enabled else None


def print_nullspace(report: dict) -> None:
    """The short verification table of a nullspace run."""
    r = report["result"]
    fl = r["first_layer"]
    if report.get("notice"):
        click.echo(f"NOTE: {report['notice']}")
    geo = ""
    if "stride" in fl:
        geo = f", stride {fl['stride'][0]}, padding {fl['padding'] if isinstance(fl['padding'], str) else fl['padding'][0]}"
    click.echo(f"{report['model']['arch']} ({report['model']['name']}): first layer {fl['name']} {fl['type']} "
               f"{'x'.join(map(str, fl['weight_shape']))}{geo} -> {fl['kind']}")
    if r.get("pgd"):
        p = r["pgd"]
        click.echo(f"PGD start: {p['steps']} steps, eps {p['eps']:g} ({p['eps_units']}): class {p['label']} -> "
                   f"{p['label_adversarial']} ({'success' if p['success'] else 'no change of class'})")
    if r["kind"] == "overlapping-conv":
        a = r["analysis"]
        click.echo(a["verdict"])
        for line in a["evidence"]:
            click.echo(f"  {line}")
        if a.get("lobpcg"):
            lo = a["lobpcg"]
            click.echo(f"  LOBPCG: {lo['iterations']} iterations, block {lo['block']}, {lo['seconds']:.1f} s; "
                       f"Ritz value {lo['ritz_value']:.4g}, residual {lo['residual']:.2g}")
        click.echo(f"  tolerance: {a['tolerance_rule']}")
        nt = r.get("naive_tiling")
        if nt:
            v = nt["verification"]
            click.echo(f"the paper's tiling of one unfolded-kernel vector (max |P| = 1) is NOT a collider: first layer "
                       f"rel. change {v['float64']['first_layer_rel']:.3g} (float64), logits rel. change "
                       f"{v['float64']['logits_rel']:.3g}")
        click.echo(f"no collider built; {r['seconds']:.1f} s")
        return
    if r["kind"] not in ("linear", "patch-conv"):
        click.echo(r["summary"])
        return
    k, c, s = r["construction"]["kernel"], r["construction"], r["perturbation"]
    per = " per patch" if r["kind"] == "patch-conv" else ""
    click.echo(f"kernel{per}: {k['out']} x {k['inp']}, rank {k['rank']}, nullity {k['nullity']} "
               f"(sigma <= {k['rtol']:.2g} * sigma_max = {k['tol']:.3g} counts as zero)")
    if c.get("unread_note"):
        click.echo(f"  {c['unread_note']}")
    pix = f" = {s['linf_pixels']:.1f} / 255 pixel levels" if "linf_pixels" in s else ""
    extra = ""
    if c.get("region_multipliers"):
        extra = " multipliers " + ", ".join(f"{m:+.2f}" for m in c["region_multipliers"])
    click.echo(f"collider: mode {report['config']['mode']}, beta {r['beta']:.4g} ({c['beta_rule']}),{extra} "
               f"|P|_2 {s['l2']:.4g} ({s['l2_over_x_l2']:.2f} x |x|_2), |P|_inf {s['linf']:.3g}{pix}")
    click.echo(f"{'':8} {'max|d layer1|':>14} {'rel':>9} {'max|d logits|':>14} {'rel':>9} {'top1':>11}")
    for key in ("float32", "float64"):
        v = r["verification"][key]
        click.echo(f"{key:8} {v['first_layer_max_abs']:>14.3g} {v['first_layer_rel']:>9.2e} {v['logits_max_abs']:>14.3g} "
                   f"{v['logits_rel']:>9.2e} {v['top1']:>5}->{v['top1_collider']:<5}")
    png = report.get("png")
    if png:
        click.echo(f"collider.png (rounded; {png['clipped_pixels']} of {png['values'] // 3} pixels clipped): logits rel. "
                   f"change {png['logits_rel_change_png']:.2e}; not exact, collider.npy is")


@click.command()
@click.option("--model", "model", default=None,
              help="torchvision classifier: vit_b_32 (patch embedding), resnet50, alexnet, ...  [required]")
@weights_option("Random weights test the structure only; pretrained ViT needs --size 224.")
@click.option("--source", "image", type=click.Path(), default=None,
              help="Image to collide from [default: scikit-image's astronaut].")
@click.option("--size", default=SIZE, show_default=True, type=int,
              help="Input side (ViT with random weights is built for it; pretrained ViT needs 224).")
@config_options(NullspaceConfig)
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Run directory [default: runs/nullspace-MODEL].")
@click.option("--overwrite", is_flag=True, help="Replace an existing nullspace run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of the table.")
@click.pass_context
def nullspace(ctx, model, weights, image, size, out, overwrite, as_json, **fields):
    """Exact collisions from the kernel of the first trainable layer (the Null-space search).

    Linear first layers and patch embeddings (stride >= kernel: ViT) give colliders x + beta * P
    that are verified in float32 and float64. Overlapping convolutions (ResNet, AlexNet) are
    analysed as linear maps on the whole image; no collider is claimed.
    """
    if model is None:
        raise click.MissingParameter(ctx=ctx, param=next(p for p in ctx.command.params if p.name == "model"))
    out = out or os.path.join("runs", f"nullspace-{model}")
    say = _say(show_progress(ctx) and not as_json)
    with user_errors():
        cfg = NullspaceConfig(**fields)
        check_nullspace(model, out, size, image, overwrite)
        from ..exact import run_nullspace  # torch, from here on

        report = run_nullspace(model, out, size, config=cfg, image=image, weights=weights, overwrite=overwrite,
                               progress=say)
    if as_json:
        echo_json(report)
        return
    print_nullspace(report)
    r = report["result"]
    files = "report.json, original.png" + (", adversarial.png" if r["pgd"] else "") + (
        ", collider.npy, collider.png, perturbation.png" if r["exact"] else "")
    click.echo(f"wrote {out}/ ({files})")


def print_table(table: dict) -> None:
    if table.get("notice"):
        click.echo(f"NOTE: {table['notice']}")
    click.echo(f"tolerance: {table['tolerance']}")
    click.echo(f"{'model':<34} {'n':>4} {'nu':>4} {'nu%':>6} {'mu':>4} {'mu%':>6} {'sum null':>9} {'null(W1)':>8}   "
               f"{'paper: nu':>9} {'mu':>4} {'sum':>7} {'W1':>4}  mu / W1 check")
    for r in table["rows"]:
        p, c = r["paper"], r["check"]
        paper = f"{p['nu']:>9} {p['mu']:>4} {p['sum_nullity']:>7} {p['first_nullity']:>4}  {c['mu']} / {c['first_nullity']}" \
            if p else ""
        click.echo(f"{r['model']:<34} {r['n_theta']:>4} {r['nu']:>4} {r['nu_pct']:>6.1f} {r['mu']:>4} {r['mu_pct']:>6.1f} "
                   f"{r['sum_nullity']:>9} {r['first_nullity']:>8}   {paper}")
    for f in table["failed"]:
        click.echo(f"{f['model']:<34} failed: {f['reason']}")
    click.echo(f"{len(table['rows'])} models in {table['seconds']:.1f} s")


@click.command()
@click.argument("models", nargs=-1)
@weights_option("Per model; random weights test the structure only (seeded); no PATH here.")
@click.option("--paper", "paper_all", is_flag=True,
              help="Every row of the paper's Table 1 that torchvision can build (segmentation, detection, DeiT shapes) "
                   "instead of the classification models.")
@config_options(NullityConfig)
@click.option("-o", "--out", "outs", type=click.Path(dir_okay=False), multiple=True,
              help="Write the table to this file: JSON if it ends in .json, else Markdown (.md). Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON instead of the text table.")
@click.pass_context
def nullity(ctx, models, weights, paper_all, outs, as_json, **fields):
    """The paper's Table 1: nullities of every weight matrix of MODELS, beside the paper's values.

    MODELS are torchvision model names [default: the paper's classification models available in
    torchvision]. An unknown name is refused up front (exit code 2); a model that fails to
    build or load later is one line of the table, not a crash.
    """
    files = [(p, "json" if p.lower().endswith(".json") else "md") for p in outs]  # (path, format): by its suffix
    with user_errors():
        cfg = NullityConfig(**fields)
        for name in models:  # a misspelt name is the user's mistake: refuse before any work
            check_model_name(name, "MODELS", ANY_MODEL)
        for path, _ in files:
            if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                raise NullspaceError(f"{path}: its folder does not exist; create it first")
    from ..exact import CLASSIFICATION_MODELS, PAPER_MODELS, nullity_table, table_markdown  # torch, from here on

    names = list(models) or list(PAPER_MODELS if paper_all else CLASSIFICATION_MODELS)
    def echo_progress(name, done, total):
        if done == total:
            click.echo(f"... {name}: {total} weight matrices", err=True)
    progress = echo_progress if show_progress(ctx) else None
    with user_errors():
        table = nullity_table(names, weights, cfg.seed, cfg.rtol, progress)
        for path, fmt in files:
            if fmt == "json":
                write_json(path, table)
            else:
                write_text(path, table_markdown(table))
    if as_json:
        echo_json(table)
        return
    print_table(table)
    for path, _ in files:
        click.echo(f"wrote {path}")
