"""knn.py: exact search against numpy, recall of the approximate index, identity checks, GPU fallback."""
from __future__ import annotations

import json
import os
import shutil

import faiss
import numpy as np
import pytest

from patchcollide.extract import ExtractConfig, extract_store
from patchcollide.knn import (FLAT_MAX_N, IndexConfig, IndexError_, PatchIndex, build_index, default_factory, evaluate,
                              exact_search, query_patches, recall_at_k)
from patchcollide.store import PatchStore


def _numpy_knn(store_path, queries, k):
    with PatchStore(store_path) as st:
        x = st.patches[...].reshape(len(st), -1).astype(np.float64)
    q = queries.reshape(len(queries), -1).astype(np.float64)
    d = np.maximum((q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :], 0)  # float64
    i = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.sqrt(np.take_along_axis(d, i, 1)), i


def test_exact_search_matches_float64_numpy(small_store, query_image):
    with PatchStore(small_store) as st:
        from patchcollide.images import Preprocess

        q = query_patches([query_image], Preprocess(**st.config["preprocess"]), stride=32)[:40]
        d, i = exact_search(st, q, 10, batch_size=1000)  # several batches: the merge is exercised
    rd, ri = _numpy_knn(small_store, q, 10)
    assert np.allclose(d, rd, rtol=1e-4, atol=0.5)
    # ids agree except where distances tie
    assert recall_at_k(i, d, ri, rd) == 1.0
    assert (i == ri).mean() > 0.97


def test_default_factory_by_size():
    assert default_factory(10_000) == "Flat"
    assert default_factory(FLAT_MAX_N) == "Flat" and FLAT_MAX_N == 50_000  # the boundary: exact up to 50,000
    assert default_factory(FLAT_MAX_N + 1).startswith("PCA128,IVF256,")
    f = default_factory(1_000_000)
    assert f.startswith("PCA128,IVF1024,PQ32") and f.endswith("Refine(SQ8_direct)")


def test_flat_index_equals_exact_and_search_grid(flat_index, query_image):
    with PatchIndex(flat_index) as pidx:
        assert pidx.manifest["factory"] == "Flat"
        res = pidx.search_image(query_image, k=5, stride=8)
        assert res.ids.shape == (625, 5) and res.query_yx.shape == (625, 2)
        # the reported distance is the pixel L2 between the query patch and the stored patch
        y, x = res.query_yx[100]
        qp = res.image[y : y + 32, x : x + 32].astype(np.float64)
        nb = pidx.store.get(res.ids[100]).astype(np.float64)
        assert np.allclose(np.sqrt(((nb - qp) ** 2).sum((1, 2, 3))), res.distances[100], rtol=1e-4, atol=0.5)
        assert np.array_equal(res.sources, pidx.store.provenance[res.ids])
        r = evaluate(pidx, query_patches([query_image], pidx.preprocess, 16), k=10)
    assert r["recall"] == 1.0


@pytest.fixture(scope="module")
def ivf_setup(tmp_path_factory, photos_dir):
    """About 23k real patches (stride 4 at 224) with a small IVF-PQ + exact refine."""
    d = str(tmp_path_factory.mktemp("ivf"))
    extract_store([photos_dir], os.path.join(d, "patches.h5"), ExtractConfig(stride=4))
    return d


def test_ivf_refine_recall_against_exact(ivf_setup, query_image):
    d = ivf_setup
    # the default's structure (PCA + IVF + PQ + exact refine), scaled down
    m = build_index(d, None, IndexConfig(factory="PCA64,IVF64,PQ16,Refine(SQ8_direct)", nprobe=8, k_factor=8,
                                         train_size=10000))
    assert m["n"] == 6 * 49 * 49 and m["train_size"] == 10000
    with PatchIndex(d) as pidx:
        q = query_patches([query_image], pidx.preprocess, 8)
        r = evaluate(pidx, q, k=20)
        assert r["recall"] >= 0.9, r
        # a weaker setting must lose recall (the measurement can fail)
        weak = PatchIndex(d, nprobe=1, k_factor=1)
        assert evaluate(weak, q, k=20)["recall"] < r["recall"]
        weak.close()


def test_build_is_seeded(ivf_setup, tmp_path):
    cfg = IndexConfig(factory="IVF32,Flat", train_size=12000, seed=3)  # seeded sample + seeded k-means
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    store = os.path.join(ivf_setup, "patches.h5")
    build_index(a, store, cfg)
    build_index(b, store, cfg)
    assert open(os.path.join(a, "index.faiss"), "rb").read() == open(os.path.join(b, "index.faiss"), "rb").read()


def test_index_with_another_store_is_refused(flat_index, tmp_path, photos_dir):
    other = str(tmp_path / "other.h5")
    extract_store([photos_dir], other, ExtractConfig(stride=16))
    with pytest.raises(IndexError_) as e:
        PatchIndex(flat_index, store_path=other)
    assert "was built for store" in str(e.value) and "\n" not in str(e.value)


def test_same_content_new_id_is_refused(flat_index, small_store, tmp_path):
    """A store rebuilt with identical content but a new id is a different store: refused."""
    d = str(tmp_path / "idx")
    shutil.copytree(flat_index, d)
    m = json.load(open(os.path.join(d, "index.json")))
    m["store"]["store_id"] = "0" * 32
    m["store"]["path"] = os.path.relpath(small_store, d)
    json.dump(m, open(os.path.join(d, "index.json"), "w"))
    with pytest.raises(IndexError_, match="was built for store"):
        PatchIndex(d)


@pytest.mark.parametrize("kind", ["missing", "truncated", "garbage", "bad_manifest"])
def test_bad_index_files_are_refused(flat_index, small_store, tmp_path, kind):
    d = str(tmp_path / "idx")
    shutil.copytree(flat_index, d)
    ip, mp = os.path.join(d, "index.faiss"), os.path.join(d, "index.json")
    m = json.load(open(mp))
    m["store"]["path"] = os.path.relpath(small_store, d)
    json.dump(m, open(mp, "w"))
    if kind == "missing":
        os.remove(ip)
    elif kind == "truncated":
        data = open(ip, "rb").read()
        open(ip, "wb").write(data[: len(data) // 2])
    elif kind == "garbage":
        open(ip, "wb").write(b"\x00" * 1000)
    else:
        open(mp, "w").write("{not json")
    with pytest.raises(IndexError_) as e:
        PatchIndex(d)
    msg = str(e.value)
    needle = {"missing": "no built index here", "truncated": "is not the index that index.json describes",
              "garbage": "is not the index that index.json describes"}.get(kind, "not a patchcollide index manifest")
    assert "\n" not in msg and needle in msg and "patchcollide index build" in msg, msg


@pytest.mark.parametrize("factory, reason", [("IVF99999,Bogus", "could not parse code description Bogus"),
                                             ("Bogus", "could not parse index string Bogus")])
def test_bad_factory_says_why_without_cpp_text(small_store, tmp_path, factory, reason):
    with pytest.raises(IndexError_) as e:
        build_index(str(tmp_path / "idx"), small_store, IndexConfig(factory=factory))
    msg = str(e.value)
    assert f"--factory {factory!r} is not a valid" in msg and reason in msg and "IVF1024,Flat" in msg, msg
    assert "std::" not in msg and ".cpp" not in msg and "\n" not in msg
    assert not (tmp_path / "idx").exists()  # refused before anything is written


def test_index_file_from_another_build_is_refused(flat_index, ivf_setup, small_store, tmp_path):
    """index.faiss replaced by another build's file (as an interrupted rebuild leaves it)."""
    d = str(tmp_path / "idx")
    shutil.copytree(flat_index, d)
    m = json.load(open(os.path.join(d, "index.json")))
    m["store"]["path"] = os.path.relpath(small_store, d)
    json.dump(m, open(os.path.join(d, "index.json"), "w"))
    PatchIndex(d).close()  # intact pair opens
    other = str(tmp_path / "other")
    build_index(other, small_store, IndexConfig(factory="IVF16,Flat", train_size=2000))
    shutil.copy(os.path.join(other, "index.faiss"), os.path.join(d, "index.faiss"))
    with pytest.raises(IndexError_, match="not the index that index.json describes"):
        PatchIndex(d)


def test_too_small_training_sample_is_a_clear_error(small_store, tmp_path):
    with pytest.raises(IndexError_, match="training patches"):
        build_index(str(tmp_path), small_store, IndexConfig(factory="IVF256,Flat", train_size=100))


def test_fewer_than_k_results_is_a_clear_error(ivf_setup, tmp_path, query_image):
    d = str(tmp_path / "ivf")
    build_index(d, os.path.join(ivf_setup, "patches.h5"), IndexConfig(factory="IVF256,Flat", train_size=12000))
    with PatchIndex(d, nprobe=1) as pidx:
        with pytest.raises(IndexError_, match="fewer than k=2000"):
            pidx.search_image(query_image, k=2000, stride=64)


def test_invalid_factory_is_a_clear_error(small_store, tmp_path):
    with pytest.raises(IndexError_, match="not a valid faiss index_factory"):
        build_index(str(tmp_path), small_store, IndexConfig(factory="IVFbanana"))


def test_gpu_path_falls_back_to_cpu(monkeypatch, ivf_setup, tmp_path, caplog):
    """With faiss claiming a GPU that cannot be used, training falls back to the CPU."""
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)

    def broken(*a, **k):
        raise RuntimeError("CUDA error: no device")

    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", broken)
    import logging

    caplog.set_level(logging.WARNING, logger="patchcollide")
    m = build_index(str(tmp_path), os.path.join(ivf_setup, "patches.h5"),
                    IndexConfig(factory="IVF32,Flat", train_size=12000))
    assert m["n"] > 0
    assert any("training on the CPU" in r.message for r in caplog.records)


def test_cuda_requested_without_gpu_is_refused(small_store, tmp_path):
    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(IndexError_, match="--device cuda"):
        build_index(str(tmp_path), small_store, IndexConfig(device="cuda"))


def test_numpy_pca_training_matches_faiss():
    """The fast PCA fills faiss' PCAMatrix so that it projects as faiss' own training does."""
    from patchcollide.knn import _train_pca_numpy

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3000, 48)) * np.linspace(5, 0.1, 48)).astype(np.float32)
    x = x @ rng.normal(size=(48, 48)).astype(np.float32)
    ref = faiss.IndexPreTransform(faiss.PCAMatrix(48, 8), faiss.IndexFlatL2(8))
    ref.train(x)
    ours = faiss.index_factory(48, "PCA8,Flat")
    _train_pca_numpy(ours, x)
    ours.train(x)
    assert ours.is_trained
    a = faiss.downcast_VectorTransform(ref.chain.at(0)).apply(x[:50])
    b = faiss.downcast_VectorTransform(ours.chain.at(0)).apply(x[:50])
    assert np.allclose(np.abs(a), np.abs(b), rtol=1e-3, atol=1e-2)  # eigenvectors up to sign
