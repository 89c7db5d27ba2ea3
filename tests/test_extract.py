"""extract.py + store.py: bad inputs, layouts, seeded fraction, bit-exact provenance, store reader."""
from __future__ import annotations

import json
import logging
import os

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import sample, write_photos
from patchcollide.offline.extract import ExtractConfig, ExtractError, extract_store, reproduce_patch, select_fraction, scan_inputs
from patchcollide.offline.store import PatchStore, StoreError, store_lock


def _good(folder):
    write_photos(folder, ("chelsea",))


def _bad_file(kind: str, folder) -> tuple[str, str | None]:
    """Write one file of ``kind`` into folder; return (name, expected skip reason or None if converted)."""
    p = os.path.join(folder, f"{kind}.png")
    photo = sample("coffee")[:120, :160]
    if kind == "empty":
        open(p, "wb").close()
        return p, "empty file"
    if kind == "truncated":
        Image.fromarray(photo).save(p.replace(".png", ".jpg"), quality=90)
        data = open(p.replace(".png", ".jpg"), "rb").read()
        os.remove(p.replace(".png", ".jpg"))
        p = p.replace(".png", ".jpg")
        open(p, "wb").write(data[: len(data) // 2])
        return p, "cannot decode"
    if kind == "not_an_image":
        p = p.replace(".png", ".txt")
        open(p, "w").write("a text file in an image folder\n")
        return p, "not an image"
    if kind == "too_small":
        Image.fromarray(photo[:20, :50]).save(p)
        return p, "smaller than a 32-pixel patch"
    if kind == "bomb":
        Image.new("L", (10_000, 9_000)).save(p)  # 90 Mpx declared, a few hundred kB on disk
        return p, "decompression-bomb guard"
    if kind == "grayscale":
        Image.fromarray(sample("camera")).save(p)
    elif kind == "palette":
        Image.fromarray(photo).convert("P", palette=Image.ADAPTIVE).save(p)
    elif kind == "rgba":
        Image.fromarray(photo).convert("RGBA").save(p)
    elif kind == "cmyk":
        p = p.replace(".png", ".jpg")
        Image.fromarray(photo).convert("CMYK").save(p)
    elif kind == "sixteen_bit":
        Image.fromarray((sample("camera").astype(np.uint16) * 257)).save(p)
    return p, None


KINDS = ["empty", "truncated", "not_an_image", "too_small", "bomb", "grayscale", "palette", "rgba", "cmyk",
         "sixteen_bit"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_is_skipped_or_converted_never_silent(tmp_path, kind, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    _good(folder)
    path, reason = _bad_file(kind, folder)
    with caplog.at_level(logging.WARNING, logger="patchcollide"):
        r = extract_store([str(folder)], str(tmp_path / "s.h5"), ExtractConfig(stride=32))
    name = os.path.basename(path)
    skipped = {os.path.basename(s["path"]): s["reason"] for s in r.manifest["skipped"]}
    with PatchStore(tmp_path / "s.h5") as st:
        stored = [st.image_record(i)["path"] for i in range(st.n_images)]
        if reason is None:  # converted: in the store, as RGB, reproducible
            assert name in stored and name not in skipped
            i = stored.index(name)
            rec = st.image_record(i)
            pid = rec["first"] + rec["count"] // 2
            assert np.array_equal(reproduce_patch(st, pid), st.get([pid])[0])
        else:
            assert name not in stored
            assert reason in skipped[name]
            warned = [m for m in caplog.messages if name in m]
            assert len(warned) == 1 and reason in warned[0]
        assert "chelsea.png" in stored  # the good photo is never lost
    manifest = json.load(open(tmp_path / "s.json"))
    assert manifest["n_skipped"] == (0 if reason is None else 1)


def test_sixteen_bit_content_matches_eight_bit(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(sample("camera").astype(np.uint16) * 257).save(folder / "a16.png")
    Image.fromarray(sample("camera")).save(folder / "b8.png")
    extract_store([str(folder)], str(tmp_path / "s.h5"), ExtractConfig(stride=32))
    with PatchStore(tmp_path / "s.h5") as st:
        a, b = st.image_record(0), st.image_record(1)
        assert np.array_equal(st.get(range(a["first"], a["first"] + a["count"])),
                              st.get(range(b["first"], b["first"] + b["count"])))


def test_random_patches_reproduce_bit_exactly(small_store):
    rng = np.random.default_rng(1)
    with PatchStore(small_store) as st:
        assert len(st) == 6 * 625
        for pid in rng.choice(len(st), 25, replace=False):
            assert np.array_equal(reproduce_patch(st, int(pid)), st.get([pid])[0])


def test_native_size_patches_reproduce(tmp_path, photos_dir):
    extract_store([photos_dir], str(tmp_path / "n.h5"), ExtractConfig(resize=None, stride=24))
    rng = np.random.default_rng(2)
    with PatchStore(tmp_path / "n.h5") as st:
        sizes = {st.image_record(i)["size"] for i in range(st.n_images)}
        assert (300, 451) in sizes  # chelsea at its native size
        for pid in rng.choice(len(st), 10, replace=False):
            assert np.array_equal(reproduce_patch(st, int(pid)), st.get([pid])[0])


def test_get_keeps_order_and_repeats_and_iter_batches_shards(small_store):
    with PatchStore(small_store) as st:
        ids = [3000, 5, 17, 5, 3749, 0]
        got = st.get(ids)
        for i, pid in enumerate(ids):
            assert np.array_equal(got[i], st.patches[pid])
        seen = []
        for rank in range(3):
            for start, b in st.iter_batches(1000, split=(3, rank)):
                seen += list(range(start, start + len(b)))
        assert seen == list(range(len(st)))


def test_imagefolder_layout_labels_and_loose_files(tmp_path, caplog):
    root = tmp_path / "train"
    write_photos(root / "cat", ("chelsea",))
    write_photos(root / "cup", ("coffee",))
    (root / "README.txt").write_text("loose")
    with caplog.at_level(logging.WARNING, logger="patchcollide"):
        r = extract_store([str(root)], str(tmp_path / "s.h5"), ExtractConfig(stride=32))
    with PatchStore(tmp_path / "s.h5") as st:
        assert st.classes == ["cat", "cup"]
        recs = [st.image_record(i) for i in range(st.n_images)]
        assert [(r_["path"], r_["class"]) for r_ in recs] == [("cat/chelsea.png", "cat"), ("cup/coffee.png", "cup")]
    assert any("README.txt" in s["path"] for s in r.manifest["skipped"])
    assert any("README.txt" in m for m in caplog.messages)


def test_loose_images_beside_class_folders_are_used(tmp_path):
    """An empty subfolder must not hide a flat folder's images; loose images beside class
    folders form a class named after the folder."""
    flat = tmp_path / "photos"
    write_photos(flat, ("chelsea", "coffee"))
    (flat / "empty").mkdir()
    r = extract_store([str(flat)], str(tmp_path / "a.h5"), ExtractConfig(stride=32))
    assert r.manifest["n_files_found"] == 2
    with PatchStore(tmp_path / "a.h5") as st:
        assert st.classes == ["photos"] and st.n_images == 2
    write_photos(flat / "cats", ("chelsea",))
    _, files, ignored = scan_inputs([str(flat)])
    assert sorted((f.path, f.cls) for f in files) == [("cats/chelsea.png", "cats"), ("chelsea.png", "photos"),
                                                       ("coffee.png", "photos")]
    assert ignored == []


def test_fraction_is_seeded_and_per_class(tmp_path):
    root = tmp_path / "train"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(20):
            (root / c / f"{i:02d}.png").write_bytes(b"x")
    _, files, _ = scan_inputs([str(root)])
    s1 = select_fraction(files, 0.25, seed=0)
    assert sorted(f.path for f in s1) == sorted(f.path for f in select_fraction(files, 0.25, seed=0))
    assert sum(f.cls == "a" for f in s1) == 5 and sum(f.cls == "b" for f in s1) == 5
    assert {f.path for f in s1} != {f.path for f in select_fraction(files, 0.25, seed=1)}


def test_rerun_with_same_arguments_is_a_no_op_and_other_arguments_are_refused(tmp_path, photos_dir):
    out = str(tmp_path / "s.h5")
    first = extract_store([photos_dir], out, ExtractConfig(stride=32))
    mtime = os.path.getmtime(out)
    again = extract_store([photos_dir], out, ExtractConfig(stride=32))
    assert again.already_complete and os.path.getmtime(out) == mtime
    with pytest.raises(ExtractError, match="--overwrite"):
        extract_store([photos_dir], out, ExtractConfig(stride=16))
    with PatchStore(out) as st:  # untouched
        assert len(st) == first.n_patches
    replaced = extract_store([photos_dir], out, ExtractConfig(stride=16), overwrite=True)
    assert replaced.n_patches > first.n_patches


def test_second_writer_is_refused(tmp_path, photos_dir):
    out = str(tmp_path / "s.h5")
    with store_lock(out):
        with pytest.raises(StoreError, match="another process is writing"):
            extract_store([photos_dir], out, ExtractConfig(stride=32))
    assert not os.path.exists(out)


def test_overwrite_waits_for_the_lock_and_keeps_the_other_writers_parts(tmp_path, photos_dir):
    out = str(tmp_path / "s.h5")
    os.makedirs(out + ".parts")
    marker = os.path.join(out + ".parts", "part-000000.npz")
    open(marker, "wb").write(b"another writer's part")
    with store_lock(out):
        with pytest.raises(StoreError, match="another process is writing"):
            extract_store([photos_dir], out, ExtractConfig(stride=32), overwrite=True)
    assert os.path.exists(marker)


def test_workers_give_the_same_store_as_one_process(tmp_path, photos_dir):
    a = extract_store([photos_dir], str(tmp_path / "a.h5"), ExtractConfig(stride=16, part_images=2), workers=1)
    b = extract_store([photos_dir], str(tmp_path / "b.h5"), ExtractConfig(stride=16, part_images=2), workers=2)
    assert a.manifest["fingerprint"] == b.manifest["fingerprint"] and a.n_patches == b.n_patches == 6 * 169


def test_lost_manifest_and_leftover_parts_are_restored_by_a_rerun(tmp_path, photos_dir):
    out = str(tmp_path / "s.h5")
    first = extract_store([photos_dir], out, ExtractConfig(stride=32))
    json_path = str(tmp_path / "s.json")
    os.remove(json_path)  # as if killed between renaming the store and writing the JSON copy
    os.makedirs(out + ".parts")
    again = extract_store([photos_dir], out, ExtractConfig(stride=32))
    assert again.already_complete and not os.path.exists(out + ".parts")
    restored = json.load(open(json_path))
    assert restored["fingerprint"] == first.manifest["fingerprint"] and restored["n_patches"] == first.n_patches


@pytest.mark.parametrize("name,needle", [("s.json", "must end in .h5"), ("index.h5", "clash"), ("s", "must end in .h5")])
def test_store_names_that_would_collide_are_refused(tmp_path, photos_dir, name, needle):
    with pytest.raises(ExtractError, match=needle):
        extract_store([photos_dir], str(tmp_path / name), ExtractConfig(stride=32))


def test_a_decoder_crash_on_one_file_does_not_stop_the_run(tmp_path, photos_dir, monkeypatch):
    import patchcollide.offline.extract as ex

    real = ex.load_rgb

    def flaky(path, pre):
        if "coffee" in str(path):
            raise EOFError("plugin gave up")
        return real(path, pre)

    monkeypatch.setattr(ex, "load_rgb", flaky)
    r = extract_store([photos_dir], str(tmp_path / "s.h5"), ExtractConfig(stride=32))
    assert r.manifest["n_images"] == 5
    assert any("coffee" in s["path"] and "EOFError" in s["reason"] for s in r.manifest["skipped"])


def test_palette_and_cmyk_convert_to_the_expected_rgb(tmp_path):
    from patchcollide.core.images import Preprocess, load_rgb

    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[:20] = (200, 30, 90)
    rgb[20:] = (10, 240, 120)
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=4).save(tmp_path / "p.png")
    assert np.array_equal(load_rgb(tmp_path / "p.png", Preprocess(resize=None))[0], rgb)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.tif")  # lossless CMYK
    back = load_rgb(tmp_path / "c.tif", Preprocess(resize=None))[0].astype(int)
    assert np.abs(back - rgb).max() <= 2


@pytest.mark.parametrize("kind", ["text", "truncated", "foreign_hdf5", "missing"])
def test_bad_store_files_are_refused(tmp_path, small_store, kind):
    p = tmp_path / "bad.h5"
    if kind == "text":
        p.write_text("not hdf5")
    elif kind == "truncated":
        data = open(small_store, "rb").read()
        p.write_bytes(data[: len(data) // 3])
    elif kind == "foreign_hdf5":
        with h5py.File(p, "w") as f:
            f["x"] = np.arange(3)
    with pytest.raises(StoreError) as e:
        PatchStore(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg


def test_bad_arguments():
    """Each error names its field (the CLI names the option: --fraction); none hard-codes a flag."""
    for kw, field in ((dict(fraction=0), "fraction"), (dict(stride=0), "stride"), (dict(resize=16), "resize"),
                      (dict(resize=100_000), "resize"), (dict(seed=-1), "seed"), (dict(compression="zip"), "compression"),
                      (dict(max_pixels=10), "max_pixels")):
        with pytest.raises(ExtractError, match=f"^{field} must be ") as e:
            ExtractConfig(**kw)
        assert e.value.field == field and "--" not in str(e.value), str(e.value)
    with pytest.raises(ExtractError, match="does not exist"):
        extract_store(["/no/such/folder"], "/tmp/never.h5")


def test_parts_capped_by_patches_give_the_same_store(tmp_path, photos_dir):
    """A part closes at part_patches patches (memory bound); the store does not depend on it."""
    a = extract_store([photos_dir], str(tmp_path / "a.h5"), ExtractConfig(stride=16))
    b = extract_store([photos_dir], str(tmp_path / "b.h5"), ExtractConfig(stride=16, part_patches=300))
    assert a.manifest["fingerprint"] == b.manifest["fingerprint"]


def test_a_run_stopped_after_some_parts_resumes_to_the_same_store(tmp_path, photos_dir):
    cfg = ExtractConfig(stride=16, part_images=1)
    clean = extract_store([photos_dir], str(tmp_path / "clean.h5"), cfg)
    out = str(tmp_path / "s.h5")

    class Stop(Exception):
        pass

    def stop_after_three(done, total):
        if done >= 3:
            raise Stop

    with pytest.raises(Stop):
        extract_store([photos_dir], out, cfg, progress=stop_after_three)
    assert not os.path.exists(out) and len(os.listdir(out + ".parts")) == 1 + 3  # state.json + 3 parts
    seen = []
    resumed = extract_store([photos_dir], out, cfg, progress=lambda d, t: seen.append(d))
    assert resumed.resumed and seen[0] == 3
    assert resumed.manifest["fingerprint"] == clean.manifest["fingerprint"]


def test_fingerprint_is_the_documented_hash(small_store):
    import hashlib

    with PatchStore(small_store) as st:
        hp = hashlib.sha256(np.ascontiguousarray(st.patches[...]).tobytes()).digest()
        hv = hashlib.sha256(st.provenance.astype("<i4").tobytes()).digest()
        assert st.fingerprint == hashlib.sha256(hp + hv).hexdigest()
