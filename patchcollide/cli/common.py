"""What every command group shares: one-line user errors, logging, progress bars."""
from __future__ import annotations

import contextlib
import json
import logging
import sys
import warnings

import click

from ..errors import PatchcollideError
from ..images import BadImage

USER_ERRORS = (PatchcollideError,)  # every user error derives from it (errors.py)


class UserError(click.ClickException):
    """A mistake in the user's input: one line on stderr, exit code 2, no traceback."""

    exit_code = 2


@contextlib.contextmanager
def user_errors():
    """Turn library errors caused by inputs into one-line UserErrors."""
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of a file it then refuses (weights_only=True):
            # noise on top of our one-line error
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            yield
    except BadImage as e:
        where = f"{e.path}: " if e.path and e.path not in str(e) else ""
        raise UserError(f"{where}{e}; pass a readable image file (PNG, JPEG, ...)") from None
    except USER_ERRORS as e:
        raise UserError(str(e)) from None
    except OSError as e:  # full disk, permissions, file-size limit: name the file and the cause
        where = e.filename or "output"
        raise UserError(f"{where}: {e.strerror or e}; free space or fix permissions and run again") from None


class _WarningFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def setup_logging(level: int) -> None:
    root = logging.getLogger("patchcollide")
    root.handlers[:] = []
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(_WarningFormatter())
    root.addHandler(h)
    root.setLevel(level)


class Progress:
    """A click progress bar (with ETA) fed by a library ``progress(done, total)`` callback."""

    def __init__(self, label: str, enabled: bool = True):
        self.label, self.enabled, self.bar, self.done = label, enabled, None, 0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, show_eta=True, show_pos=True,
                                         file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def show_progress(ctx: click.Context) -> bool:
    return not (ctx.obj or {}).get("quiet")


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
