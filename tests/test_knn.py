"""knn.py: exact search against numpy, recall of the approximate index, identity checks, GPU fallback."""
from __future__ import annotations

import json
import os
import shutil

import faiss
import numpy as np
import pytest

from patchcollide.offline import index_build
from patchcollide.offline.extract import ExtractConfig, extract_store
from patchcollide.offline.index_build import (FLAT_MAX_N, HNSW_ABOVE_N, SEARCH_DEFAULTS_HNSW, SEARCH_DEFAULTS_IVF,
                                              IndexConfig, build_index, default_factory, default_search_params)
from patchcollide.offline.index_format import IndexError_
from patchcollide.offline.knn import PatchIndex, evaluate, exact_search, query_patches, recall_at_k
from patchcollide.offline.store import PatchStore


def _numpy_knn(store_path, queries, k):
    with PatchStore(store_path) as st:
        x = st.patches[...].reshape(len(st), -1).astype(np.float64)
    q = queries.reshape(len(queries), -1).astype(np.float64)
    d = np.maximum((q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :], 0)  # float64
    i = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.sqrt(np.take_along_axis(d, i, 1)), i


def test_exact_search_matches_float64_numpy(small_store, query_image):
    with PatchStore(small_store) as st:
        from patchcollide.core.images import Preprocess

        q = query_patches([query_image], Preprocess(**st.config["preprocess"]), stride=32)[:40]
        d, i = exact_search(st, q, 10, batch_size=1000)  # several batches: the merge is exercised
    rd, ri = _numpy_knn(small_store, q, 10)
    assert np.allclose(d, rd, rtol=1e-4, atol=0.5)
    # ids agree except where distances tie
    assert recall_at_k(i, d, ri, rd) == 1.0
    assert (i == ri).mean() > 0.97


def test_default_factory_by_size():
    """The rule of index/README.md at each boundary: fails if a boundary or a tier moves."""
    assert (FLAT_MAX_N, HNSW_ABOVE_N) == (50_000, 2_000_000)
    assert default_factory(10_000) == "Flat"
    assert default_factory(50_000) == "Flat"  # exact up to 50,000
    assert default_factory(50_001) == "PCA128,IVF256,PQ32,Refine(SQ8_direct)"  # at least 256 lists
    assert default_factory(1_000_000) == "PCA128,IVF1024,PQ32,Refine(SQ8_direct)"  # nearest sqrt N
    assert default_factory(2_000_000) == "PCA128,IVF1024,PQ32,Refine(SQ8_direct)"  # still a flat quantizer
    assert default_factory(2_000_001) == "PCA128,IVF4096_HNSW32,PQ32,Refine(SQ8_direct)"  # nearest 4 sqrt N, HNSW
    assert default_factory(4_200_000) == "PCA128,IVF8192_HNSW32,PQ32,Refine(SQ8_direct)"
    assert default_factory(37_000_000) == "PCA128,IVF32768_HNSW32,PQ32,Refine(SQ8_direct)"
    assert default_factory(1_000_000_000) == "PCA128,IVF131072_HNSW32,PQ32,Refine(SQ8_direct)"
    assert default_factory(1_000_000, lossless_uint8=False).endswith("Refine(Flat)")
    assert default_search_params(50_001) == default_search_params(HNSW_ABOVE_N) == SEARCH_DEFAULTS_IVF
    assert default_search_params(HNSW_ABOVE_N + 1) == default_search_params(10**9) == SEARCH_DEFAULTS_HNSW


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


def test_hnsw_tier_reaches_recall(ivf_setup, query_image, monkeypatch, tmp_path):
    """The large-N tier on real patches, its boundaries scaled down: the rule picks an IVF behind
    an HNSW quantizer; the same structure (PQ made smaller: PQ32's training alone takes a minute
    here) is built with the PCA fitted on a capped sample and the rest trained in PCA space,
    the refine copy streamed, the tier's search defaults and the quantizer's efSearch applied,
    and it finds the exact neighbours."""
    monkeypatch.setattr(index_build, "FLAT_MAX_N", 1_000)
    monkeypatch.setattr(index_build, "HNSW_ABOVE_N", 5_000)
    monkeypatch.setattr(index_build, "PCA_TRAIN_MAX", 2_048)  # the PCA sees 2,048 of the 6,000-patch sample
    store = os.path.join(ivf_setup, "patches.h5")
    with PatchStore(store) as st:
        assert default_factory(len(st)) == "PCA128,IVF512_HNSW32,PQ32,Refine(SQ8_direct)"  # 4 sqrt(14,406) -> 512
    d = str(tmp_path / "hnsw")
    m = build_index(d, store, IndexConfig(factory="PCA64,IVF128_HNSW32,PQ8,Refine(SQ8_direct)", train_size=6000))
    assert (m["nprobe"], m["k_factor"]) == SEARCH_DEFAULTS_HNSW and m["refine_streamed"]
    with PatchIndex(d) as pidx:
        q = query_patches([query_image], pidx.preprocess, 8)
        quantizer = faiss.downcast_index(faiss.extract_index_ivf(pidx.index).quantizer)
        assert isinstance(quantizer, faiss.IndexHNSWFlat) and quantizer.ntotal == 128
        assert quantizer.hnsw.efSearch == max(index_build.HNSW_EF_MIN, 2 * m["nprobe"])  # finds all nprobe lists
        r = evaluate(pidx, q, k=16)
    assert r["recall"] >= 0.95, r
    with PatchIndex(d, nprobe=2, k_factor=1) as weak:  # the measurement can fail
        assert evaluate(weak, q, k=16)["recall"] < r["recall"] - 0.05


def test_streamed_refine_copy_is_byte_identical(small_store, tmp_path):
    """The refine copy streamed from the store gives the very file faiss writes for the in-RAM index."""
    cfg = dict(factory="IVF16,SQ8,Refine(SQ8_direct)", train_size=2000, nprobe=4, k_factor=4)
    a = build_index(str(tmp_path / "a"), small_store, IndexConfig(**cfg))
    b = build_index(str(tmp_path / "b"), small_store, IndexConfig(**cfg, stream_refine=False))
    assert a["refine_streamed"] and not b["refine_streamed"]
    assert open(tmp_path / "a" / "index.faiss", "rb").read() == open(tmp_path / "b" / "index.faiss", "rb").read()
    with PatchIndex(str(tmp_path / "a")) as pidx, PatchStore(small_store) as st:
        ids = [0, len(st) // 2, len(st) - 1]
        assert np.array_equal(pidx.index.reconstruct_batch(np.array(ids)).astype(np.uint8),
                              st.get(ids).reshape(3, -1))  # SQ8_direct: the refine copy is the pixels


def test_streamed_write_refuses_an_unknown_layout(small_store, tmp_path, monkeypatch):
    """Where faiss' file layout is not the one the streaming writer expects, the build stops with
    a clear error and leaves no index file behind (not a silently corrupt one)."""
    real = faiss.serialize_index
    monkeypatch.setattr(faiss, "serialize_index", lambda ix: np.append(real(ix), np.uint8(7)))
    d = tmp_path / "idx"
    with pytest.raises(IndexError_, match="stream_refine=False"):
        build_index(str(d), small_store, IndexConfig(factory="IVF16,SQ8,Refine(SQ8_direct)", train_size=2000))
    assert not list(d.glob("index.faiss*")) and not list(d.glob("index.json*"))


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
    PatchIndex(d, small_store).close()  # intact pair opens (its store given: the copy is not beside it)
    other = str(tmp_path / "other")
    build_index(other, small_store, IndexConfig(factory="IVF16,Flat", train_size=2000))
    shutil.copy(os.path.join(other, "index.faiss"), os.path.join(d, "index.faiss"))
    with pytest.raises(IndexError_, match="not the index that index.json describes"):
        PatchIndex(d, small_store)


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
    from patchcollide.offline.index_build import _train_pca_numpy

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
