"""What every command group shares: one-line user errors, logging, progress bars.

Like every module of the CLI, it imports at its top only modules that load no torch, so that
``--help`` and every check of the command line, a job file and the input files come before
torch does; a command imports the modules that do the work in its own body, after its checks."""
from __future__ import annotations

import contextlib
import errno
import os
import json
import logging
import sys
import time
import warnings

import click

from ..core.errors import PatchcollideError
from ..core.images import BadImage
from ..core.plugins import Registry
from ..engine.checkpoints import Interrupted
from ..engine.config import WEIGHTS_RULE, CollideError
from ..executors import EXECUTORS

USER_ERRORS = (PatchcollideError,)  # every user error derives from it (errors.py)


class UserError(click.ClickException):
    """A mistake in the user's input: one line on stderr, exit code 2, no traceback."""

    exit_code = 2


class Stopped(UserError):
    """A stop the user asked for (Ctrl-C, SIGTERM): one line, not worded as an error."""

    def show(self, file=None) -> None:
        click.echo(self.format_message(), err=True)


FLAGS = {"k": ("-k",), "objective_options": ("--objective-option",)}  # fields whose option is not --field-name


def weights_option(note: str = ""):
    """``--weights``, the same default (auto) and rule in every command (engine.config.WEIGHTS_RULE)."""
    return click.option("--weights", default="auto", show_default=True, metavar="auto|imagenet|random|PATH",
                        help=WEIGHTS_RULE[0].upper() + WEIGHTS_RULE[1:] + "." + (f" {note}" if note else ""))


def flags_of(field: str) -> tuple[str, ...]:
    """The collide option's spellings of a CollideConfig field: ``min_steps`` -> ``--min-steps``."""
    return FLAGS.get(field, ("--" + field.replace("_", "-"),))


def flag_of(field: str) -> str:
    """The collide option of a CollideConfig field: ``min_steps`` -> ``--min-steps``, ``k`` -> ``-k``."""
    return flags_of(field)[0]


@contextlib.contextmanager
def user_errors():
    """Turn library errors caused by inputs into one-line UserErrors."""
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of a file it then refuses (weights_only=True):
            # noise on top of our one-line error
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            yield
    except Interrupted as e:  # a signal stopped a run after its checkpoint: the shell's exit code
        err = Stopped(str(e))
        err.exit_code = e.exit_code
        raise err from None
    except BadImage as e:
        where = f"{e.path}: " if e.path and e.path not in str(e) else ""
        raise UserError(f"{where}{e}; {e.fix}") from None
    except CollideError as e:  # a config field's error names its option
        raise UserError(f"{flag_of(e.field)} {e.problem}" if e.field else str(e)) from None
    except USER_ERRORS as e:
        raise UserError(str(e)) from None
    except OSError as e:  # full disk, permissions, something in the way: name the file, the cause and its fix
        raise UserError(os_error_message(e)) from None


FIXES = {  # errno -> what to do
    errno.ENOSPC: "free space and run again", errno.EDQUOT: "free space (disk quota) and run again",
    errno.EFBIG: "the file-size limit (ulimit -f) is too low for it; raise it and run again",
    errno.EACCES: "fix the permissions or choose another location", errno.EPERM: "fix the permissions or choose another "
    "location", errno.EROFS: "the file system is read-only; choose another location",
    errno.EEXIST: "a file is in the way of a folder that is needed; move it or choose another path",
    errno.ENOTDIR: "a file is in the way of a folder that is needed; move it or choose another path",
    errno.ENOENT: "check the path", errno.EISDIR: "it is a folder; give a file",
}


def os_error_message(e: OSError) -> str:
    """One line for an OSError that reached the CLI: the file, the cause and the fix for that cause."""
    where = e.filename or "output"
    return f"{where}: {e.strerror or e}; {FIXES.get(e.errno, 'check the path and the disk, and run again')}"


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


LOG_EVERY = float(os.environ.get("PATCHCOLLIDE_LOG_EVERY", 30))  # seconds between progress lines off a terminal


def hms(s: float) -> str:
    s = round(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Ticker:
    """Progress off a terminal (logs, CI, notebooks): one line at the first update, then at most
    every ``every`` seconds, and at the end, each with the elapsed time, the rate and the ETA.
    ``clock`` is for tests."""

    def __init__(self, label: str, unit: str = "", every: float | None = None, clock=time.monotonic):
        self.label, self.unit, self.clock = label, unit, clock
        self.every = LOG_EVERY if every is None else every
        self.t0 = self.last = None
        self.start_done = 0

    def line(self, done: int, total: int, extra: str = "") -> str | None:
        """The line to print for this update, or None when it is not due."""
        now = self.clock()
        if self.t0 is None:
            self.t0, self.start_done = now, done
        elif done < total and now - self.last < self.every:
            return None
        self.last = now
        spent = now - self.t0
        rate = (done - self.start_done) / spent if spent > 0 else 0.0
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        eta = f", ETA {hms((total - done) / rate)}" if rate > 0 and done < total else ""
        speed = f", {rate:.3g} {self.unit or 'items'}/s" if rate > 0 else ""
        return f"{self.label}: {done}/{total}{pct}, {hms(spent)} elapsed{speed}{eta}" + (f"; {extra}" if extra else "")

    def __call__(self, done: int, total: int, extra: str = "") -> None:
        text = self.line(done, total, extra)
        if text is not None:
            click.echo(text, err=True)


class Progress:
    """A click progress bar (with ETA) fed by a library ``progress(done, total)`` callback on a
    terminal; elsewhere (logs, CI) a Ticker line at most every LOG_EVERY seconds; silent under -q."""

    def __init__(self, label: str, enabled: bool = True):
        self.label, self.bar, self.done = label, None, 0
        self.enabled = enabled
        self.ticker = None if sys.stderr.isatty() else Ticker(label)

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or self.done >= total > 0:  # a finished bar stays finished
            return
        if self.ticker is not None:
            self.ticker(done, total)
            self.done = done
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, show_eta=True, show_pos=True,
                                         file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done
        if done >= total:  # its line is complete: the next phase's bar starts below it
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def deprecated(old: str, new: str) -> None:
    """One line on stderr for an old name that still works for a release. Shown under -q too:
    scripts run with -q, and they are what has to learn of the new name."""
    click.echo(f"warning: {old} is deprecated; use {new}", err=True)


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


class RegistryChoice(click.Choice):
    """A click.Choice over a registry's names (``core.plugins.Registry``: the built-ins and the
    installed plug-ins), read whenever click checks a value or shows the choices, so that an
    entry registered after the CLI was imported is a choice too. Listing loads no plug-in."""

    def __init__(self, registry: Registry):
        self.registry = registry
        super().__init__((), case_sensitive=True)

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.registry)

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ sets it; the registry is the source
        pass


def executor_options(f):
    """--executor and --address, shared by the commands that can run on a Ray cluster."""
    f = click.option("--address", default=None, metavar="auto|HOST:PORT",
                     help="Ray cluster to use with --executor ray: 'auto' for the one `ray start` runs on this "
                          "machine, or a head node's HOST:PORT [default: start one on this machine].")(f)
    return click.option("--executor", type=RegistryChoice(EXECUTORS), default="local", show_default=True,
                        help="Where the work runs: " + EXECUTORS.describe())(f)
