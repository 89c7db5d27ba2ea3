"""runs.run.rebuilt: a model made again from its recorded identity, its weights file checked by sha256."""
import types

import pytest

from patchcollide.engine.config import CollideError
from patchcollide.runs.run import rebuilt


def _loader(sha):
    asked = []

    def load(weights):
        asked.append(weights)
        return types.SimpleNamespace(weights=types.SimpleNamespace(sha256=sha))

    return load, asked


def test_a_file_is_loaded_by_name_and_checked():
    load, asked = _loader("abc")
    assert rebuilt({"kind": "file", "name": "w.pt", "sha256": "abc"}, load, "weights file", "fix").weights.sha256 == "abc"
    assert asked == ["w.pt"]
    load, _ = _loader("other")
    with pytest.raises(CollideError, match=r"^judge weights w.pt changed since the run \(sha256 differs\); restore"):
        rebuilt({"kind": "file", "name": "w.pt", "sha256": "abc"}, load, "judge weights", "restore them")


def test_a_kind_is_loaded_by_kind_without_a_check():
    load, asked = _loader(None)
    rebuilt({"kind": "random"}, load, "weights file", "fix")
    assert asked == ["random"]
