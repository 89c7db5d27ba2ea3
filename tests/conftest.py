"""Shared fixtures: real photos from scikit-image, small stores and indexes built in tmp dirs."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image

warnings.filterwarnings("ignore", message=".*pkg_resources.*")

PHOTOS = ("chelsea", "coffee", "rocket", "camera", "immunohistochemistry", "colorwheel")


def sample(name: str) -> np.ndarray:
    from patchcollide.core.images import sample_photo

    return sample_photo(name)


def write_photos(folder, names=PHOTOS) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    out = []
    for n in names:
        p = os.path.join(folder, f"{n}.png")
        Image.fromarray(sample(n)).save(p)
        out.append(p)
    return out


def source_and_target(folder) -> tuple[str, str]:
    """Two real photos written into ``folder``: (astronaut, chelsea) PNG paths."""
    src, tgt = folder / "src.png", folder / "tgt.png"
    Image.fromarray(sample("astronaut")).save(src)
    Image.fromarray(sample("chelsea")).save(tgt)
    return str(src), str(tgt)


def vertex_pngs(run) -> dict:
    """A run folder's vertex and argmax PNGs: {name: bytes}."""
    return {f: (run / f).read_bytes() for f in sorted(os.listdir(run)) if f.startswith(("vertex_", "argmax_"))}


def changed_after_now(path):
    """A progress signal of the process about to start: a function that is true once ``path``
    (a file or folder) is made or changed after this call, as (inode, ctime): a file made anew
    may get a removed one's inode number, and a leftover of a killed process does not count."""
    def identity():
        st = os.stat(path)
        return st.st_ino, st.st_ctime_ns

    try:
        before = identity()
    except FileNotFoundError:
        before = None

    def ready() -> bool:
        try:
            return identity() != before
        except FileNotFoundError:
            return False

    return ready


def on_a_terminal(args, returncode: int = 0, stdout_too: bool = False) -> str:
    """Run the CLI with stderr (and stdout with ``stdout_too``) on a pseudo-terminal; returns
    what the terminal showed."""
    import pty
    import subprocess
    import sys

    main, sub = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "patchcollide", *args],
                         stdout=sub if stdout_too else subprocess.DEVNULL, stderr=sub)
    os.close(sub)
    chunks = []
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not data:
            break
        chunks.append(data)
    p.wait()
    os.close(main)
    assert p.returncode == returncode, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory):
    """A flat folder of six real photos (colour and greyscale)."""
    d = tmp_path_factory.mktemp("photos")
    write_photos(d)
    return str(d)


@pytest.fixture(scope="session")
def query_image(tmp_path_factory):
    """A held-out real photo (astronaut), not in photos_dir."""
    d = tmp_path_factory.mktemp("query")
    return write_photos(d, ("astronaut",))[0]


@pytest.fixture(scope="session")
def small_store(tmp_path_factory, photos_dir):
    """Store of photos_dir at 224 x 224, stride 8: 6 x 625 = 3750 patches."""
    from patchcollide.offline.extract import ExtractConfig, extract_store

    d = tmp_path_factory.mktemp("store")
    path = str(d / "patches.h5")
    extract_store([photos_dir], path, ExtractConfig(stride=8, part_images=2))
    return path


@pytest.fixture(scope="session")
def flat_index(tmp_path_factory, small_store):
    """A Flat (exact) index over small_store, in its own directory."""
    from patchcollide.offline.knn import IndexConfig, build_index

    d = str(tmp_path_factory.mktemp("flat_index"))
    build_index(d, small_store, IndexConfig())
    return d


def run_cli(*args):
    """``patchcollide -q ARGS`` through click's runner: (exit code, output)."""
    from click.testing import CliRunner

    from patchcollide.cli import cli

    r = CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)
    return r.exit_code, r.output


def one_line(out: str) -> str:
    """The one line of a user error's output (no traceback, nothing else)."""
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in out, out
    return lines[0]
