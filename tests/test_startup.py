"""Help and every check of the command line, a job file and the input files come before torch
is imported (issue 27, item 6): each case runs the CLI as a user does, in a fresh process, and
reads whether torch got loaded. scripts/bench_cli_startup.py times the same paths."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import click
import numpy as np
import pytest
from PIL import Image

from patchcollide.cli import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the CLI as `patchcollide ARGS` runs it (sys.exit included), then what it loaded and its exit code
RUN = """
import json, sys
from patchcollide.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="patchcollide")
    code = 0
except SystemExit as e:
    code = e.code
print(json.dumps({"torch": "torch" in sys.modules, "code": code}))
"""


def run_cli(args: list[str], cwd) -> tuple[dict, str]:
    """(``{"torch": loaded, "code": exit code}``, stderr) of ``patchcollide ARGS`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def command_paths(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under ``group``, as the words that call it."""
    out = []
    for name, cmd in sorted(group.commands.items()):
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out += command_paths(cmd, (*prefix, name))
    return out


def test_every_command_is_found():
    paths = command_paths()
    assert {("collide",), ("batch",), ("sample",), ("index", "build"), ("world", "build")} <= set(paths), paths


@pytest.mark.parametrize("path", [(), *command_paths()], ids=lambda p: " ".join(p) or "patchcollide")
def test_help_loads_no_torch(path, tmp_path):
    got, err = run_cli([*path, "--help"], tmp_path)
    assert got == {"torch": False, "code": 0}, err


@pytest.fixture()
def images(tmp_path):
    g = np.random.default_rng(0)
    for name in ("s", "t"):
        Image.fromarray(g.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("x")
    return tmp_path


COLLIDE = ["collide", "--mode", "pixel", "--size", "32", "--source", "s.png", "--target", "t.png", "-o", "run"]


@pytest.mark.parametrize("args, message", [
    ([*COLLIDE, "--background", "300", "0", "0"], "--background must be three values R G B in 0..255"),
    ([*COLLIDE, "--steps", "0"], "--steps must be between 1 and 1,000,000, got 0"),
    ([*COLLIDE, "--mode", "squares"], "'squares' is not one of"),
    ([*COLLIDE, "--source", "missing.png"], "--source 'missing.png' does not exist; pass an image file"),
    ([*COLLIDE, "--target", "text.png"], "--target text.png: "),
    ([*COLLIDE, "--source", "folder"], "is a folder; pass one image file"),
    ([*COLLIDE[:-2], "-o", "folder"], "--out folder already exists"),
    ([*COLLIDE, "--mode", "patches", "-i", "no-index"], "no-index: no built index here"),
    (["collide", "--source", "s.png"], "missing --target, --out"),
    (["sample", "--out", "folder"], "folder: not a finished patchcollide run"),
    (["world", "build", "--size", "8"], "--size must be between 32 and 448, got 8"),
    (["batch", "jobs.jsonl", "-o", "out", "--address", "auto"], "--address is not an option of --executor local; add --executor ray"),
])
def test_input_errors_come_before_torch(images, args, message):
    job = {"id": "a", "source": "s.png", "target": "t.png", "mode": "pixel"}
    (images / "jobs.jsonl").write_text(json.dumps(job) + "\n")
    got, err = run_cli(args, images)
    assert got == {"torch": False, "code": 2}, err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("line, message", [
    ({"steps": "many"}, "jobs.jsonl:1: "),
    ({"background": [300, 0, 0]}, "\"background\" must be three values R G B in 0..255"),
    ({"shape": "round"}, "shape"),
    ({"source": "missing.png"}, "missing.png does not exist"),
])
def test_job_file_errors_come_before_torch(images, line, message):
    (images / "jobs.jsonl").write_text(json.dumps({"id": "a", "source": "s.png", "target": "t.png", **line}) + "\n")
    got, err = run_cli(["batch", "jobs.jsonl", "-o", "out"], images)
    assert got == {"torch": False, "code": 2}, err
    assert message in err and err.startswith("Error: jobs.jsonl:1: ") and len(err.strip().splitlines()) == 1, err
    assert not (images / "out").exists()


def test_batch_inputs_come_before_torch(images):
    (images / "jobs.jsonl").write_text(json.dumps({"id": "a", "source": "s.png", "target": "t.png"}) + "\n")
    got, err = run_cli(["batch", "jobs.jsonl", "-o", "out", "--dataset", "nowhere"], images)
    assert got == {"torch": False, "code": 2} and "--dataset nowhere: no such folder" in err, err
    got, err = run_cli(["batch", "jobs.jsonl", "-o", "out", "-i", "no-index"], images)  # patch mode: the index
    assert got == {"torch": False, "code": 2} and "no-index: no built index here" in err, err


def test_a_valid_command_line_goes_on_to_torch(images):
    """The checks pass a good command line on: it loads torch (here, to fail on a judge file that
    begins as torch.save's zip archives do but is none)."""
    (images / "judge.pt").write_bytes(b"PK\x03\x04" + bytes(60))
    got, err = run_cli([*COLLIDE, "--judge", "judge.pt", "--judge-model", "digits_lenet5"], images)
    assert got == {"torch": True, "code": 2}, err
    assert "judge.pt" in err and not (images / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["nullspace", "--model", "resnet18", "--vectors", "0"], "--vectors must be >= 1, got 0"),
    (["nullspace", "--model", "resnet18", "--dense-sizes", "16,99"], "--dense-sizes must be between 1 and 64"),
    (["nullspace", "--model", "resnet18", "--mode", "tiles"], "'tiles' is not one of"),
    (["nullspace", "--model", "resnet18", "--size", "8"], "--size must be between 32 and 1024, got 8"),
    (["nullspace", "--model", "resnet18", "--source", "missing.png"], "--source 'missing.png' does not exist"),
    (["nullspace", "--model", "resnet180"], "--model 'resnet180': unknown model; use a torchvision model name"),
    (["nullity", "alexnet", "vgg61"], "MODELS 'vgg61': unknown model"),
    ([*COLLIDE, "--model", "vgg61"], "(did you mean vgg19 or vgg16 or vgg13?)"),
    ([*COLLIDE, "--judge-model", "lenet"], "--judge-model 'lenet': unknown model"),
    ([*COLLIDE, "--judge", "no-judge.pt"], "--judge 'no-judge.pt': no such file"),
    ([*COLLIDE, "--judge", "folder"], "--judge folder: is a folder"),
    ([*COLLIDE, "--judge", "text.png"], "--judge text.png: not a torch state dict (it is a text file)"),
    ([*COLLIDE, "--judge", "s.png"], "--judge s.png: not a torch state dict (it is a PNG image)"),
    (["sample", "--out", "folder", "--judge", "s.png"], "folder: not a finished patchcollide run"),
    (["batch", "jobs.jsonl", "-o", "out", "--mode", "pixel"], "No such option"),
    (["batch", "jobs.jsonl", "-o", "out", "--model", "vgg61"], "--model 'vgg61': unknown model"),
    (["batch", "jobs.jsonl", "-o", "out", "--judge", "s.png"], "--judge s.png: not a torch state dict"),
    (["collide", "--resume", "nowhere"], "--resume nowhere: no such run"),
    (["collide", "--resume", "folder"], "folder: no checkpoint to resume at"),
])
def test_names_judges_nullspace_and_resume_come_before_torch(images, args, message):
    """--model and --judge-model against the names torchvision and the digits world have, a --judge
    file's first bytes, nullspace's settings and collide --resume's run: all before torch (issue 27)."""
    job = {"id": "a", "source": "s.png", "target": "t.png", "mode": "pixel"}
    (images / "jobs.jsonl").write_text(json.dumps(job) + "\n")
    got, err = run_cli(args, images)
    assert got == {"torch": False, "code": 2}, err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_the_model_names_are_torchvisions_and_ours():
    """The torch-free lists of names (models.names) are the ones torch-side code builds from."""
    import torchvision.models as tvm

    from patchcollide.models import build, digits, names

    assert names.TORCHVISION_CLASSIFIERS == tuple(tvm.list_models(module=tvm))
    assert set(names.TORCHVISION_CLASSIFIERS + names.TORCHVISION_OTHERS) == set(tvm.list_models())
    assert names.OWN_MODELS == tuple(digits.BUILDERS) and names.SHAPE_ONLY == tuple(build._SHAPE_ONLY)


def test_a_finished_run_is_refused_by_resume_before_torch(images):
    from patchcollide.core.formats import RUN_KIND

    (images / "done").mkdir()
    (images / "done" / "report.json").write_text(json.dumps({"kind": RUN_KIND}))
    got, err = run_cli(["collide", "--resume", "done"], images)
    assert got == {"torch": False, "code": 2}, err
    assert "done is a finished run; nothing to resume" in err
