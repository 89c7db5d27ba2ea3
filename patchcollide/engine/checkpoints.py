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
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import tempfile
import threading

from ..core.errors import PatchcollideError
from ..core.files import atomic_open

log = logging.getLogger(__name__)

FORMAT = 1
NAME = "checkpoint.pt"
EVERY = 25  # steps between checkpoints by default (one step: about 1 s at 128 px on 2 CPU cores)


class CheckpointError(PatchcollideError):
    """A checkpoint that cannot be used: missing, unreadable, or of another run."""


class Interrupted(PatchcollideError):
    """SIGINT or SIGTERM stopped the loop after it saved its checkpoint; ``exit_code`` is
    the shell's 128 + signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum


PROGRESS = "progress.json"  # beside the checkpoint: {"step": N, "steps": T}, for status pages


def saved_step(directory: str) -> tuple[int, int | None] | None:
    """(step, steps) of the checkpoint in ``directory`` from its small progress file, or None."""
    try:
        with open(os.path.join(directory, PROGRESS), encoding="utf-8") as fh:
            rec = json.load(fh)
        return int(rec["step"]), rec.get("steps")
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
        """Write the checkpoint atomically; returns its path, or None when it could not be
        written. A save that fails (a full disk) never stops the run: a periodic one is logged
        once; the final one falls back to the system's temporary folder."""
        import torch

        buf = io.BytesIO()  # serialised first: a failing write is then Python's OSError, not torch's
        torch.save({"format": FORMAT, "key": self.key, **self.static, **loop}, buf)
        data = buf.getbuffer()
        try:
            os.makedirs(self.directory, exist_ok=True)
            with atomic_open(self.path, "wb") as fh:
                fh.write(data)
            self.saved_to = self.path
            with atomic_open(os.path.join(self.directory, PROGRESS), "w") as fh:  # readable without torch
                json.dump({"step": loop.get("step"), "steps": (self.key.get("config") or {}).get("steps")}, fh)
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
                with atomic_open(path, "wb") as fh:
                    fh.write(data)
            except OSError as e2:
                shutil.rmtree(rescue, ignore_errors=True)
                log.warning("final checkpoint not written to %s (%s) nor to %s (%s)", self.path, e.strerror or e,
                            path, e2.strerror or e2)
                return None
            log.warning("checkpoint not written to %s (%s); saved in %s instead", self.path, e.strerror or e, path)
            self.saved_to = path
            return path

    def load(self) -> dict:
        """The checkpoint, checked to belong to this run; CheckpointError otherwise."""
        obj = self.read()
        if obj["key"] != self.key:
            diff = sorted(k for k in set(obj["key"]) | set(self.key) if obj["key"].get(k) != self.key.get(k))
            raise CheckpointError(f"{self.path} belongs to a run with other {', '.join(diff)}; resume with the "
                                  "same settings, or delete it and start again")
        return obj

    def read(self) -> dict:
        """The checkpoint as saved, whatever run it belongs to; CheckpointError when missing
        or unreadable."""
        import torch

        try:
            obj = torch.load(self.path, map_location="cpu", weights_only=True)  # tensors and plain values only
        except FileNotFoundError:
            raise CheckpointError(f"no checkpoint at {self.path}; start the run without --resume") from None
        except Exception as e:  # noqa: BLE001 - a torn or foreign file: one line
            raise CheckpointError(f"{self.path} is not a readable checkpoint ({type(e).__name__}); "
                                  "delete it and start the run again") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise CheckpointError(f"{self.path} is not a checkpoint of this version of patchcollide; "
                                  "delete it and start the run again")
        return obj

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
