"""The locks of a batch folder: one per batch process (``batch_lock``: a second process on
the same folder and shard is refused) and one per job (``JobLock``: processes with
overlapping shards never write the same job at once; ``job_held`` probes it)."""
from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator

from ..core.files import is_locked, locked, try_lock, unlock
from .jobfile import JobsError

BUSY_WAIT = 2.0  # seconds to wait for a job lock held briefly (a start-up sweep) before calling the job busy




def batch_lock_path(out_dir: str, shard: tuple[int, int] | None) -> str:
    return os.path.join(out_dir, ".lock-all" if shard is None else f".lock-shard-{shard[0]}-of-{shard[1]}")


@contextlib.contextmanager
def batch_lock(out_dir: str, shard: tuple[int, int] | None = None) -> Iterator[None]:
    """Hold DIR/.lock-all (or .lock-shard-I-of-N) for a batch process's life: a second process
    on the same directory and shard is refused with JobsError. Creates ``out_dir``."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise JobsError(f"--out {out_dir} is a file; give a directory for the batch's outputs")
    os.makedirs(out_dir, exist_ok=True)
    with locked(batch_lock_path(out_dir, shard), busy=_busy(out_dir, shard)):
        yield


def refuse_busy(out_dir: str, shard: tuple[int, int] | None = None) -> None:
    """``batch_lock``'s JobsError now, when another process holds the lock (a probe: takes
    nothing, creates nothing), so that it comes before the other checks of a batch."""
    try:
        busy = os.path.isdir(out_dir) and is_locked(batch_lock_path(out_dir, shard))
    except OSError:  # unreadable: batch_lock itself says what is wrong
        return
    if busy:
        raise _busy(out_dir, shard)


def _busy(out_dir: str, shard: tuple[int, int] | None) -> JobsError:
    what = "this batch" if shard is None else f"shard {shard[0]}/{shard[1]}"
    return JobsError(f"{out_dir}: another process is already running {what} here; wait for it to finish "
                     "(or stop it), or give another --out or --shard")


class JobLock:
    """DIR/.locks/<out>.lock, held while a process works on one job, so that processes with
    overlapping shards never write the same job at once; batch.json shows a held one as busy.
    The holder writes "pid host" into the file (emptied on release), for a person to read."""

    def __init__(self, fd: int):
        self.fd = fd

    @classmethod
    def acquire(cls, out_dir: str, out: str, wait: float = BUSY_WAIT) -> JobLock | None:
        """The lock, or None when another process holds it for longer than ``wait`` seconds."""
        d = os.path.join(out_dir, ".locks")
        os.makedirs(d, exist_ok=True)
        deadline = time.monotonic() + wait
        while True:
            fd = try_lock(os.path.join(d, out + ".lock"))
            if fd is not None:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
                return cls(fd)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def release(self) -> None:
        try:
            os.ftruncate(self.fd, 0)
        finally:
            unlock(self.fd)


def job_held(out_dir: str, out: str) -> bool:
    """True when a process (this one included) holds the job's lock now (a probe: never waits)."""
    try:
        return is_locked(os.path.join(out_dir, ".locks", out + ".lock"))
    except OSError:
        return False
