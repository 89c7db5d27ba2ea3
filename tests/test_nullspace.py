"""Exact collisions (Ozbulak et al. 2022): nullities, the paper's Table 1 structure, null-space
colliders verified in float32 and float64, the overlapping-convolution analysis, the CLI."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from patchcollide.cli import cli
from patchcollide.exact import (
    EPS32,
    MODES,
    PAPER_TABLE1,
    NullspaceConfig,
    NullspaceError,
    circular_spectrum,
    compare_with_paper,
    dense_spectrum,
    lobpcg_spectrum,
    matrix_rank,
    nullity_row,
    nullspace_search,
    pct_matches,
    run_nullspace,
    structure_row,
    weight_matrices,
)
from patchcollide.models.build import build_model, builder


@pytest.fixture(autouse=True)
def one_thread():
    """LAPACK's eigen-solvers with 2 OpenMP threads crawl when the 2 cores are shared (10 s instead
    of 0.07 s for a 768 x 768 eigvalsh): these tests run single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run(*args):
    r = CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)
    return r.exit_code, r.output


def one_line_error(out: str) -> str:
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, out
    assert "Traceback" not in out
    return lines[0]


# ------------------------------------------------------------------ nullities of known shapes

@pytest.mark.parametrize("layer,nullity", [
    (nn.Linear(10, 4), 6), (nn.Linear(4, 10), 0), (nn.Conv2d(3, 64, 11), 299), (nn.Conv2d(3, 64, 3), 0),
    (nn.Conv2d(3, 64, 7), 83), (nn.Conv2d(3, 768, 32, stride=32), 2304),
])
def test_nullity_of_layers_of_known_shape(layer, nullity):
    torch.manual_seed(0)
    layer.reset_parameters()
    W = layer.weight.reshape(layer.weight.shape[0], -1)
    r = matrix_rank(W)
    assert r.nullity == nullity and r.rank + r.nullity == W.shape[1]
    assert r.rtol == max(W.shape) * EPS32 and r.tol == pytest.approx(r.rtol * r.sigma_max)


def test_rank_deficient_weight_gets_its_extra_nullity_and_rtol_overrides():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(6, 10, generator=g)
    W[3] = W[1]
    W[5] = 2 * W[0] - W[2]  # two dependent rows: rank 4, nullity 10 - 4 = 6 (not 4)
    assert matrix_rank(W).nullity == 6
    U, _, Vh = torch.linalg.svd(torch.randn(5, 5, generator=g, dtype=torch.float64))
    M = U @ torch.diag(torch.tensor([1.0, 0.5, 0.1, 1e-3, 1e-9], dtype=torch.float64)) @ Vh
    assert matrix_rank(M).nullity == 1  # 1e-9 < 5 * eps32; 1e-3 is not
    assert matrix_rank(M, rtol=1e-2).nullity == 2


def test_gram_route_finds_the_rank_of_a_large_rank_deficient_matrix():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(520, 450, generator=g) @ torch.randn(450, 700, generator=g)  # rank 450 by construction
    r = matrix_rank(W)
    assert r.method == "gram" and r.rank == 450 and r.nullity == 700 - 450


def test_table_columns_on_a_tiny_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),  # 8 x 27: nullity 19, mu
        nn.Conv2d(8, 32, 1),  # 32 x 8: 0
        nn.ConvTranspose2d(32, 4, 2),  # not counted (the paper's convention)
        nn.MultiheadAttention(8, 2),  # in_proj 24 x 8: 0; out_proj 8 x 8: 0
        nn.Linear(8, 3),  # 3 x 8: nullity 5, mu
        nn.BatchNorm1d(3), nn.LayerNorm(3),  # not counted
    )
    names = [n for n, _ in weight_matrices(model)]
    assert names == ["0.weight", "1.weight", "3.in_proj_weight", "3.out_proj.weight", "4.weight"]
    with torch.no_grad():
        model[4].weight[2] = model[4].weight[0] + model[4].weight[1]  # rank 2: nullity 6
    row = nullity_row(model)
    assert (row["n_theta"], row["nu"], row["mu"]) == (5, 2, 2)
    assert row["sum_nullity"] == 19 + 6 and row["first_nullity"] == 19 and row["first_shape"] == [8, 27]
    assert row["structural_sum_nullity"] == 24 and row["rank_deficient"] == ["4.weight"]


def test_paper_structure_is_reproduced_by_every_torchvision_row():
    """mu and n_theta depend on shapes only: equal to the paper's for every row we can build
    (on the meta device: no weights are drawn)."""
    for p in PAPER_TABLE1:
        if p.model is None:
            continue
        with torch.device("meta"):
            row = structure_row(builder(p.model)(weights=None))
        assert row["mu"] == p.mu, p.name
        assert pct_matches(p.nu, row["n_theta"], p.nu_pct) and pct_matches(p.mu, row["n_theta"], p.mu_pct), p.name
        assert row["structural_sum_nullity"] <= p.sum_nullity, p.name
        if p.first_nullity == row["structural_first_nullity"]:
            continue
        # where the paper's first nullity is not the bound: pretrained deficiency, or (RetinaNet) impossible
        assert p.name in ("ResNet-50", "DenseNet-121", "ViT-Base", "DeiT-Base", "Fcn", "MobileNet-V3",
                          "Keypoint R-CNN", "RetinaNet"), p.name
    alex = {p.name: p for p in PAPER_TABLE1}["AlexNet"]
    check = compare_with_paper({"n_theta": 8, "nu": 7, "mu": 7, "sum_nullity": 16515, "structural_sum_nullity": 16515,
                                "first_nullity": 299, "structural_first_nullity": 299}, alex)
    assert check["mu"] == "match" and check["first_nullity"] == "match" and check["n_theta_consistent"]
    assert check["sum_nullity"].startswith("paper +32")
    retina = {p.name: p for p in PAPER_TABLE1}["RetinaNet"]
    assert "impossible" in compare_with_paper({"n_theta": 71, "nu": 50, "mu": 50, "sum_nullity": 72828,
                                               "structural_sum_nullity": 72828, "first_nullity": 83,
                                               "structural_first_nullity": 83}, retina)["first_nullity"]


def test_alexnet_first_layer_and_mu_with_random_weights():
    model, info = build_model("alexnet", "random", seed=0)
    assert info.name == "random(seed=0)"
    mats = weight_matrices(model)
    assert sum(W.shape[0] < W.shape[1] for _, W in mats) == 7 and len(mats) == 8
    assert matrix_rank(mats[0][1]).nullity == 299  # the paper's value: structure decides it


def test_build_model_leaves_the_callers_random_stream_alone():
    torch.manual_seed(123)
    expected = torch.rand(8)
    torch.manual_seed(123)
    a, info = build_model("squeezenet1_1", "random", seed=3)
    assert torch.equal(torch.rand(8), expected)  # as if build_model had not run
    assert info.name == "random(seed=3)"
    b, _ = build_model("squeezenet1_1", "random", seed=3)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    torch.manual_seed(3)  # the same weights as seeding the global generator (the old behaviour)
    ref = builder("squeezenet1_1")(weights=None).state_dict()
    assert all(torch.equal(sa[k], ref[k]) for k in sa)
    c, _ = build_model("squeezenet1_1", "random", seed=4)
    assert not torch.equal(c.features[0].weight, a.features[0].weight)


# ------------------------------------------------------------------ exact colliders

def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 20), nn.ReLU(), nn.Linear(20, 16), nn.Tanh(),
                         nn.Linear(16, 10)).eval()


def _patch_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 4, stride=4), nn.GELU(), nn.Flatten(), nn.Linear(32 * 16, 10)).eval()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("which", ["linear", "patch"])
def test_nullspace_colliders_are_exact(which, mode):
    model = _mlp() if which == "linear" else _patch_model()
    x = torch.randn(1, 3, 8, 8) if which == "linear" else torch.randn(1, 3, 16, 16)
    res = nullspace_search(model, x, NullspaceConfig(mode=mode, beta=60.0, vectors=3, seed=1))
    assert res.exact and res.kind == ("linear" if which == "linear" else "patch-conv")
    assert res.construction["kernel"]["nullity"] == (192 - 20 if which == "linear" else 48 - 32)
    P = res.perturbation
    assert res.size["l2"] >= float(x.norm()), res.size  # a large change of the input ...
    for key, bound in (("float32", 1e-5), ("float64", 1e-12)):  # ... that the network cannot see
        v = res.verification[key]
        assert v["first_layer_rel"] < bound and v["logits_rel"] < bound, (key, v)
        assert v["top1"] == v["top1_collider"]
    assert torch.equal(res.collider, (x + P.float().reshape(x.shape)))
    with torch.no_grad():  # an independent check of the saved float32 collider
        y0, y1 = model(x), model(res.collider)
    assert float((y1 - y0).abs().max() / y0.abs().max()) < 1e-5
    if mode == "regions":
        mult = res.construction["region_multipliers"]
        assert 0.0 in mult and any(m != 0 for m in mult)
        h = x.shape[-1] // 2  # one quarter of the image (the zero multiplier's) is untouched
        quarters = [P[..., :h, :h], P[..., :h, h:], P[..., h:, :h], P[..., h:, h:]]
        assert any(float(q.abs().max()) == 0 for q in quarters)
        assert sum(float(q.abs().max()) > 0 for q in quarters) >= 2
    if mode == "repeat" and which == "patch":  # the paper's P = beta [phi ... phi]: one vector in every patch
        tiles = P.reshape(3, 4, 4, 4, 4).permute(1, 3, 0, 2, 4).reshape(16, -1)
        assert torch.allclose(tiles, tiles[:1].expand_as(tiles))


def test_patch_conv_leaves_unread_pixels_alone_and_checks_vectors():
    model = nn.Sequential(nn.Conv2d(3, 32, 4, stride=4), nn.Flatten(), nn.Linear(32 * 16, 10)).eval()
    x = torch.randn(1, 3, 18, 18)  # rows/cols 16, 17 are in no patch
    res = nullspace_search(model, x, NullspaceConfig(mode="several", vectors=16, beta=5.0))
    assert res.construction["unread_pixels"] == 18 * 18 - 16 * 16
    assert float(res.perturbation[:, 16:, :].abs().max()) == 0 and float(res.perturbation[:, :, 16:].abs().max()) == 0
    assert res.verification["float64"]["first_layer_rel"] < 1e-12
    with pytest.raises(NullspaceError, match="exceeds the per-patch nullity 16"):
        nullspace_search(model, x, NullspaceConfig(mode="several", vectors=17))


def test_linear_first_layer_without_kernel_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 40)).eval()
    with pytest.raises(NullspaceError, match="trivial kernel"):
        nullspace_search(model, torch.randn(1, 3, 2, 2))


# ------------------------------------------------------------------ overlapping convolutions

def test_overlapping_conv_reports_a_trivial_kernel_and_no_collider():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 7, stride=2, padding=3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 8 * 8, 10)).eval()
    x = torch.randn(1, 3, 16, 16)
    res = nullspace_search(model, x)
    assert res.kind == "overlapping-conv" and not res.exact
    assert res.collider is None and res.verification is None
    a = res.analysis
    assert a["finding"] == "trivial-exact" and "no exact collider" in res.summary
    d = a["dense"][-1]
    assert d["input"] == [3, 16, 16] and d["nullity"] == 0 and d["sigma_min"] > 100 * d["tol"]
    assert a["per_patch_kernel"]["nullity"] == 147 - 16  # the unfolded weight has a kernel; the image map has none
    v = res.naive_tiling["verification"]["float64"]  # the paper's tiling changes the layer's output
    assert v["first_layer_rel"] > 1e-2 and v["logits_rel"] > 1e-3


def test_unread_inputs_are_an_exact_kernel():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.Flatten()).eval()  # gaps between windows
    res = nullspace_search(model, torch.randn(1, 3, 16, 16))
    a = res.analysis
    assert a["unread_inputs"] > 0 and a["finding"] == "non-trivial"
    assert a["dense"][-1]["nullity"] >= a["unread_inputs"]


def test_circular_symbol_equals_the_dense_spectrum_of_the_circular_conv():
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 16, 7, stride=2, padding=3, padding_mode="circular")
    d, c = dense_spectrum(conv, (3, 16, 16)), circular_spectrum(conv, (3, 16, 16))
    assert c["sigma_min"] == pytest.approx(d["sigma_min"], rel=1e-9)
    assert c["sigma_max"] == pytest.approx(d["sigma_max"], rel=1e-9)


def test_lobpcg_estimate_agrees_with_the_dense_spectrum():
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 16, 7, stride=2, padding=3)
    d = dense_spectrum(conv, (3, 24, 24))
    lo = lobpcg_spectrum(conv, (3, 24, 24), iters=200, seed=0)
    assert lo["sigma_min_estimate"] >= d["sigma_min"] * (1 - 1e-9)  # a Ritz value is an upper bound
    assert lo["sigma_min_estimate"] == pytest.approx(d["sigma_min"], rel=1e-3)
    assert lo["sigma_max_estimate"] == pytest.approx(d["sigma_max"], rel=5e-2)


# ------------------------------------------------------------------ CLI

VIT_ARGS = ["--size", "64", "--beta", "40", "--mode", "several"]  # ViT-B/32 at 64 x 64: 2 x 2 patches


@pytest.fixture(scope="module")
def vit_cli_run(tmp_path_factory):
    """One ``patchcollide nullspace`` run on ViT-B/32 (the slowest run here), shared by two tests."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("cli") / "vit"
        code, text = run("nullspace", "--model", "vit_b_32", *VIT_ARGS, "--out", out)
    finally:
        torch.set_num_threads(n)
    return out, code, text


def test_cli_nullspace_patch_embedding(vit_cli_run):
    out, code, text = vit_cli_run
    assert code == 0, text
    assert "RANDOM WEIGHTS" in text and "nullity 2304" in text and "patch-conv" in text
    rep = json.loads((out / "report.json").read_text())
    r = rep["result"]
    assert r["exact"] and r["verification"]["float64"]["logits_rel"] < 1e-12
    assert r["verification"]["float32"]["first_layer_rel"] < 1e-5
    assert rep["config"]["mode"] == "several" and rep["model"]["name"].startswith("random(seed=0)")
    assert {"torch", "torchvision", "numpy"} <= set(rep["versions"])
    col = np.load(out / "collider.npy")
    assert col.shape == (1, 3, 64, 64) and col.dtype == np.float32
    assert {"original.png", "collider.png", "perturbation.png"} <= set(os.listdir(out))
    assert "png" in rep and rep["png"]["values"] == 3 * 64 * 64
    code, text = run("nullspace", "--model", "vit_b_32", "--size", "64", "--out", out)
    assert code == 2 and "already exists" in one_line_error(text)


def test_run_nullspace_from_python_writes_what_the_cli_writes(vit_cli_run, tmp_path):
    cli_out, code, text = vit_cli_run
    assert code == 0, text
    out = tmp_path / "api"
    config = NullspaceConfig(mode="several", beta=40.0)
    api = run_nullspace("vit_b_32", str(out), 64, config=config)
    cli_rep = json.loads((cli_out / "report.json").read_text())
    written = json.loads((out / "report.json").read_text())  # the report returned is the one written
    assert set(written) == set(api) and written["result"]["summary"] == api["result"]["summary"]
    assert sorted(os.listdir(out)) == sorted(os.listdir(cli_out))
    assert set(written) == set(cli_rep) and set(written["result"]) == set(cli_rep["result"])
    for key in ("notice", "config", "model", "inputs", "png"):
        assert written[key] == cli_rep[key], key
    for key in ("first_layer", "kind", "exact", "summary", "beta", "construction", "perturbation", "verification"):
        assert written["result"][key] == cli_rep["result"][key], key
    a, c = np.load(out / "collider.npy"), np.load(cli_out / "collider.npy")
    assert a.dtype == np.float32 and a.shape == (1, 3, 64, 64) and np.array_equal(a, c)
    # the outcome, checked here and not taken from the report: the saved collider is far from the
    # image the model saw, and the first layer's output is the same on both
    from PIL import Image

    from patchcollide.exact import imagenet_input

    net, _ = build_model("vit_b_32", "random", seed=0, image_size=64)
    x = imagenet_input(np.array(Image.open(out / "original.png").convert("RGB")))
    with torch.no_grad():
        y0, y1 = net.conv_proj(x), net.conv_proj(torch.from_numpy(a))
    assert float((torch.from_numpy(a) - x).abs().max()) > 1.0  # over 58 of 255 pixel levels
    assert float((y1 - y0).abs().max() / y0.abs().max()) < 1e-5
    with pytest.raises(NullspaceError, match="already exists; choose another name or pass --overwrite"):
        run_nullspace("vit_b_32", str(out), 64, config=config)


def test_cli_nullspace_overlapping_conv(tmp_path):
    out = tmp_path / "r18"
    code, text = run("nullspace", "--model", "resnet18", "--size", "64", "--iters", "30", "--dense-sizes", "16",
                     "--out", out, "--json")
    assert code == 0, text
    rep = json.loads(text)
    r = rep["result"]
    assert r["kind"] == "overlapping-conv" and not r["exact"] and r["verification"] is None
    a = r["analysis"]
    assert a["finding"] in ("trivial-estimate", "trivial-exact", "not-established") and "no exact collider" in a["verdict"]
    assert a["lobpcg"]["input"] == [3, 64, 64] and a["lobpcg"]["sigma_min_estimate"] > 100 * a["lobpcg"]["tol"]
    assert a["per_patch_kernel"]["nullity"] == 83
    assert sorted(os.listdir(out)) == ["original.png", "report.json"]


def test_cli_nullity_table(tmp_path):
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    code, text = run("nullity", "squeezenet1_1", "no_such_model", "--out", md, "--out", js)
    assert code == 2 and "MODELS 'no_such_model': unknown model" in text and len(text.strip().splitlines()) == 1
    assert not md.exists() and not js.exists()  # a misspelt name is refused before any work
    code, text = run("nullity", "squeezenet1_1", "--out", md, "--out", js)
    assert code == 0, text
    assert "tolerance" in text
    t = json.loads(js.read_text())
    (row,) = t["rows"]
    assert (row["n_theta"], row["mu"], row["nu"], row["sum_nullity"], row["first_nullity"]) == (26, 16, 16, 3392, 0)
    assert row["check"]["mu"] == "match" and row["check"]["first_nullity"] == "match"
    assert row["check"]["sum_nullity"] == "match"  # the paper's 3,392 is the structural value
    assert "Squeezenet" in md.read_text() and "eps(float32)" in md.read_text()


def test_cli_nullity_json_flag_and_out(tmp_path, monkeypatch):
    """--json prints the table as JSON on stdout (it takes no value: a name after it is a model);
    --out writes by suffix."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["-q", "nullity", "--json", "squeezenet1_1", "--out", "t.json", "--out", "t.md"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    assert [row["model"] for row in printed["rows"]] == ["squeezenet1_1"]
    assert json.loads((tmp_path / "t.json").read_text()) == printed
    assert (tmp_path / "t.md").read_text().startswith("Weights: random")
    r = CliRunner().invoke(cli, ["-q", "nullity", "alexnet", "--out", "no/dir/t.json"], catch_exceptions=False)
    assert r.exit_code == 2 and r.stdout == "" and not (tmp_path / "no").exists()
    assert r.stderr.splitlines() == ["Error: no/dir/t.json: its folder does not exist; create it first"]


@pytest.mark.parametrize("args,needle", [
    (["nullspace", "--model", "no_such_net", "--out", "{tmp}/o"], "unknown model"),
    (["nullspace", "--model", "resnet18", "--weights", "{textfile}", "--out", "{tmp}/o"], "not a torch state dict"),
    (["nullspace", "--model", "resnet18", "--weights", "{listfile}", "--out", "{tmp}/o"], "not a state dict"),
    (["nullspace", "--model", "resnet18", "--weights", "{tmp}/none.pt", "--out", "{tmp}/o"], "no such file"),
    (["nullspace", "--model", "resnet18", "--source", "{tmp}/nope.png", "--out", "{tmp}/o"], "does not exist"),
    (["nullspace", "--model", "resnet18", "--source", "{textfile}", "--out", "{tmp}/o"], "not an image"),
    (["nullspace", "--model", "resnet18", "--beta", "nan", "--out", "{tmp}/o"], "--beta must be a finite"),
    (["nullspace", "--model", "resnet18", "--beta", "inf", "--out", "{tmp}/o"], "--beta must be a finite"),
    (["nullspace", "--model", "resnet18", "--vectors", "0", "--out", "{tmp}/o"], "--vectors must be >= 1"),
    (["nullspace", "--model", "resnet18", "--size", "8", "--out", "{tmp}/o"], "--size must be between"),
    (["nullspace", "--model", "resnet18", "--rtol", "2", "--out", "{tmp}/o"], "--rtol must be in (0, 1)"),
    (["nullspace", "--model", "resnet18", "--dense-sizes", "a,b", "--out", "{tmp}/o"], "--dense-sizes"),
    (["nullspace", "--model", "resnet18", "--out", "{occupied}"], "already exists"),
    (["nullspace", "--model", "resnet18", "--out", "{occupied}", "--overwrite"], "not a nullspace run"),
    (["nullspace", "--model", "resnet18", "--mode", "bogus", "--out", "{tmp}/o"], "bogus"),
    (["nullity", "alexnet", "--rtol", "2"], "--rtol must be in (0, 1)"),
    (["nullity", "alexnet", "--seed", "-1"], "--seed must be between 0 and 2^63 - 1, got -1"),
    (["nullity", "alexnet", "--out", "{tmp}/no/dir/t.json"], "folder does not exist"),
    (["nullspace", "--out", "{tmp}/o"], "Missing option '--model'"),
])
def test_cli_user_errors_are_one_line_with_exit_code_2(tmp_path, args, needle):
    textfile = tmp_path / "notes.txt"
    textfile.write_text("hello")
    listfile = tmp_path / "list.pt"
    torch.save([1, 2, 3], listfile)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    fmt = dict(tmp=tmp_path, textfile=textfile, listfile=listfile, occupied=occupied)
    code, out = run(*[a.format(**fmt) for a in args])
    assert code == 2, out
    assert needle in one_line_error(out)
    assert not (tmp_path / "o").exists()
