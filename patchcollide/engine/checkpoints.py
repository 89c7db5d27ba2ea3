"""Checkpoints of the vertex loop, so that a killed or interrupted ``collide`` loses at most a
few steps. Imports only ``core``.

A run writing ``OUT`` keeps its checkpoint in ``OUT.partial/checkpoint.pt`` (batch: in
``DIR/.partial/<job>/``) until ``OUT`` is complete. The file is rewritten atomically every
``every`` steps, after the last step, and when SIGINT or SIGTERM arrives (the loop then
stops with :class:`Interrupted`). It holds everything the loop needs to go on exactly where it
was: the step, the parameters (logits and their entries, or pixels), the optimiser's state,
the history, the target statistics and the candidates' ids, and the ``key`` of the run
(inputs, config, model) that a resume must match. The loop draws no random numbers after its
start, so a resumed run ends with the same vertices as one never stopped (bit-identical on
the same machine and thread count).

Importing it loads no torch (the CLI reads its names before anything loads): torch is imported
where a checkpoint is written or read.

A run whose final write failed (a full disk) keeps its optimised state in the checkpoint (or,
when even that cannot be written there, in the system's temporary folder): ``--resume``
writes the run without optimising again.

Damage: torch does not check a zip's CRCs, so a checkpoint with flipped bytes may load and
restore a different state. Every save therefore records the sha256 of the file's bytes in
``progress.json`` beside it, and :meth:`Checkpointer.read` checks it before torch reads the
file. ``progress.json`` is written first, naming the new file's hash and the previous file's
(``previous``): a kill between the two renames leaves the previous checkpoint beside a
record that still vouches for it, so an intact checkpoint never looks damaged. A checkpoint
that fails the check, that torch cannot read, or whose state does not restore is a
:class:`DamagedCheckpoint`: one line naming the file and the fix. A checkpoint saved before
hashes were recorded (no ``sha256`` in its ``progress.json``, or no ``progress.json``) is still
resumed, with one warning that its bytes were not checked; a failure while restoring it is a
:class:`DamagedCheckpoint` too.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import tempfile
import threading

from ..core.errors import PatchcollideError, first_line
from ..core.files import atomic_open

log = logging.getLogger(__name__)

FORMAT = 1
NAME = "checkpoint.pt"
EVERY = 25  # steps between checkpoints by default (one step: about 1 s at 128 px on 2 CPU cores)


class CheckpointError(PatchcollideError):
    """A checkpoint that cannot be used: missing, unreadable, or of another run."""


FIX = "delete it and start the run again, or start it again with --overwrite"  # collide's fix; a batch fixes it itself


class DamagedCheckpoint(CheckpointError):
    """A checkpoint whose bytes or contents are not what was saved: its sha256 differs from the
    recorded one, torch cannot read it, or its state does not restore (missing keys, wrong
    shapes, entries out of range). ``path``, ``why`` (the parenthesis of the message)."""

    def __init__(self, path: str, why: str = "its contents are not what was saved", fix: str = FIX):
        super().__init__(f"damaged checkpoint {path} ({why}): {fix}")
        self.path, self.why = path, why


# what the loop and resume_collide read from every checkpoint (collide.loop_state, Checkpointer.static)
LOOP_KEYS = ("key", "step", "done", "converged", "param", "opt", "history", "seconds", "target", "candidates")
LOOP_TYPES = {"key": dict, "step": int, "done": bool, "converged": bool, "param": dict, "opt": dict, "history": dict,
              "seconds": (int, float), "target": dict}
RESTORE_ERRORS = (KeyError, IndexError, RuntimeError, TypeError, ValueError, AttributeError)


@contextlib.contextmanager
def restoring(path: str):
    """Around code that turns a checkpoint's contents into a run's state: any of
    ``RESTORE_ERRORS`` (a state that does not fit: a missing key, a wrong shape, an entry out of
    range) becomes a one-line :class:`DamagedCheckpoint` naming ``path``."""
    try:
        yield
    except DamagedCheckpoint:
        raise
    except RESTORE_ERRORS as e:
        raise DamagedCheckpoint(path, f"its state does not restore: {type(e).__name__}: {first_line(e, 120)}") from None


def sha256_of(data) -> str:
    return hashlib.sha256(data).hexdigest()


class Interrupted(PatchcollideError):
    """SIGINT or SIGTERM stopped the loop after it saved its checkpoint; ``exit_code`` is
    the shell's 128 + signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum


# beside the checkpoint, readable without torch: {"step": N, "steps": T, "sha256": the file's,
# "previous": {"step", "sha256"} of the file it replaces, or null}; status pages read the step
PROGRESS = "progress.json"


def saved_step(directory: str) -> tuple[int, int | None] | None:
    """(step, steps) of the checkpoint in ``directory`` from its small progress file, or None.
    A checkpoint older than the record (a kill between the record and the file's rename) is
    the ``previous`` one: its step."""
    try:
        with open(os.path.join(directory, PROGRESS), encoding="utf-8") as fh:
            rec = json.load(fh)
        step, prev = int(rec["step"]), rec.get("previous")
        if prev and os.stat(os.path.join(directory, NAME)).st_mtime_ns < os.stat(
                os.path.join(directory, PROGRESS)).st_mtime_ns:
            step = int(prev["step"])
        return step, rec.get("steps")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def partial_dir(out: str) -> str:
    """Where a run writing ``out`` keeps its checkpoint until ``out`` is complete."""
    return os.path.abspath(out).rstrip(os.sep) + ".partial"


class StopSignals:
    """While active, SIGINT and SIGTERM only set ``signum`` (the loop checks it after each
    step, saves and stops); the previous handlers come back on exit. Outside the main thread
    signals cannot be caught and nothing changes."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()


_unchecked: set = set()  # checkpoints without a recorded sha256 already warned about


class Checkpointer:
    """Saves and loads one run's checkpoint in ``directory``.

    key: what the run is (inputs, config, model identity): a checkpoint of another key is
    never resumed. static: what every save carries besides the loop's state (target,
    candidate ids). every: steps between saves (0: only the final state and on a signal).
    """

    def __init__(self, directory: str, key: dict, every: int = EVERY, stop: StopSignals | None = None):
        if every < 0:
            raise CheckpointError(f"--checkpoint-every must be >= 0, got {every}")
        self.directory, self.key, self.every, self.stop = directory, key, every, stop
        self.static: dict = {}
        self.saved_to: str | None = None  # where the last save went
        self._warned = False
        self._on_disk: dict | None = None  # {"step", "sha256"} of the file in directory, when known

    @property
    def path(self) -> str:
        return os.path.join(self.directory, NAME)

    def exists(self) -> bool:
        return os.path.isfile(self.path)

    def due(self, step: int) -> bool:
        return (self.every > 0 and step % self.every == 0) or self.stopping

    @property
    def stopping(self) -> bool:
        return self.stop is not None and self.stop.signum is not None

    def save(self, loop: dict, final: bool = False) -> str | None:
        """Write the checkpoint atomically, its record (``PROGRESS``, with the file's sha256)
        first; returns its path, or None when it could not be written. A save that fails (a full
        disk) never stops the run: a periodic one is logged once; the final one falls back to the
        system's temporary folder (the checkpoint and its record)."""
        import torch

        buf = io.BytesIO()  # serialised first: a failing write is then Python's OSError, not torch's
        torch.save({"format": FORMAT, "key": self.key, **self.static, **loop}, buf)
        data = buf.getbuffer()
        record = {"step": loop.get("step"), "steps": (self.key.get("config") or {}).get("steps"),
                  "sha256": sha256_of(data), "previous": self._on_disk}
        try:
            self._write(self.directory, data, record)
            self.saved_to = self.path
            self._on_disk = {"step": record["step"], "sha256": record["sha256"]}
            return self.path
        except OSError as e:
            if not final:
                if not self._warned:
                    log.warning("checkpoint not written to %s (%s); the run goes on without it",
                                self.path, e.strerror or e)
                    self._warned = True
                return None
            try:
                rescue = tempfile.mkdtemp(prefix="patchcollide-rescue-")
            except OSError:
                return None
            path = os.path.join(rescue, NAME)
            try:
                self._write(rescue, data, {**record, "previous": None})
            except OSError as e2:
                shutil.rmtree(rescue, ignore_errors=True)
                log.warning("final checkpoint not written to %s (%s) nor to %s (%s)", self.path, e.strerror or e,
                            path, e2.strerror or e2)
                return None
            log.warning("checkpoint not written to %s (%s); saved in %s instead", self.path, e.strerror or e, path)
            self.saved_to = path
            return path

    @staticmethod
    def _write(directory: str, data, record: dict) -> None:
        """The record, then the file: a kill between the two renames leaves the previous file,
        which the record's ``previous`` still vouches for."""
        os.makedirs(directory, exist_ok=True)
        with atomic_open(os.path.join(directory, PROGRESS), "w") as fh:  # readable without torch
            json.dump(record, fh)
        with atomic_open(os.path.join(directory, NAME), "wb") as fh:
            fh.write(data)

    def load(self) -> dict:
        """The checkpoint, checked to belong to this run; CheckpointError otherwise (another
        run's before an incomplete one's)."""
        obj = self.read(complete=False)
        if obj["key"] != self.key:
            diff = sorted(k for k in set(obj["key"]) | set(self.key) if obj["key"].get(k) != self.key.get(k))
            raise CheckpointError(f"{self.path} belongs to a run with other {', '.join(diff)}; resume with the "
                                  "same settings, or delete it and start again")
        self._check_complete(obj)
        return obj

    def read(self, complete: bool = True) -> dict:
        """The checkpoint as saved, whatever run it belongs to; CheckpointError when missing,
        DamagedCheckpoint when its bytes differ from the recorded sha256, torch cannot read it
        or (``complete``) it lacks what every checkpoint holds."""
        import torch

        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise CheckpointError(f"no checkpoint at {self.path}; start the run without --resume") from None
        digest = sha256_of(data)
        self._verify(digest)
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # tensors and plain values only
        except Exception as e:  # noqa: BLE001 - a torn or foreign file: one line
            raise DamagedCheckpoint(self.path, f"torch cannot read it: {type(e).__name__}") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise CheckpointError(f"{self.path} is not a checkpoint of this version of patchcollide; "
                                  "delete it and start the run again")
        if not isinstance(obj.get("key"), dict):
            raise DamagedCheckpoint(self.path, "it has no key")
        if complete:
            self._check_complete(obj)
        self._on_disk = {"step": obj["step"] if isinstance(obj.get("step"), int) else None, "sha256": digest}
        return obj

    def _check_complete(self, obj: dict) -> None:
        """DamagedCheckpoint unless ``obj`` holds every one of LOOP_KEYS, of its type."""
        missing = [k for k in LOOP_KEYS if k not in obj]
        if missing:
            raise DamagedCheckpoint(self.path, f"it lacks {', '.join(missing)}")
        wrong = [k for k, t in LOOP_TYPES.items() if not isinstance(obj[k], t)]
        if wrong:
            raise DamagedCheckpoint(self.path, f"its {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not "
                                    "what a checkpoint holds")

    def _verify(self, digest: str) -> None:
        """The file's sha256 against its record's (the new file's or, after a kill between the
        two renames, the previous one's). A file without a recorded hash (saved by an older
        version) passes with a warning."""
        try:
            with open(os.path.join(self.directory, PROGRESS), encoding="utf-8") as fh:
                rec = json.load(fh)
        except FileNotFoundError:
            rec = {}
        except (OSError, ValueError) as e:
            raise DamagedCheckpoint(self.path, f"{PROGRESS} beside it, which holds its sha256, is unreadable: "
                                    f"{type(e).__name__}") from None
        if not isinstance(rec, dict):
            raise DamagedCheckpoint(self.path, f"{PROGRESS} beside it, which holds its sha256, is not a record")
        if "sha256" not in rec:
            if self.path not in _unchecked:  # once per file (collide --resume reads it twice)
                _unchecked.add(self.path)
                log.warning("%s has no sha256 recorded beside it (saved by an older version): resumed without "
                            "checking its bytes", self.path)
            return
        prev = rec.get("previous")
        if digest not in (rec["sha256"], prev.get("sha256") if isinstance(prev, dict) else None):
            raise DamagedCheckpoint(self.path, f"its sha256 differs from the one recorded in {PROGRESS} when it was "
                                    "saved")

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self._on_disk = None
