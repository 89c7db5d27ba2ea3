"""What every command group shares: one-line user errors, logging, progress bars.

Like every module of the CLI, it imports at its top only modules that load no torch, so that
``--help`` and every check of the command line, a job file and the input files come before
torch does; a command imports the modules that do the work in its own body, after its checks."""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import json
import logging
import sys
import time
import types
import typing
import warnings

import click

from ..core.errors import PatchcollideError
from ..core.images import BadImage
from ..core.plugins import Registry
from ..core.progress import eta_seconds, hms, rate_of
from ..engine.checkpoints import Interrupted
from ..engine.config import CollideConfig, CollideError
from ..executors import EXECUTORS
from ..models.names import DEFAULT_WEIGHTS, WEIGHTS_METAVAR, weights_help

USER_ERRORS = (PatchcollideError,)  # every user error derives from it (errors.py)


class UserError(click.ClickException):
    """A mistake in the user's input: one line on stderr, exit code 2, no traceback."""

    exit_code = 2


class Stopped(UserError):
    """A stop the user asked for (Ctrl-C, SIGTERM): one line, not worded as an error."""

    def show(self, file=None) -> None:
        click.echo(self.format_message(), err=True)


def weights_option(note: str = ""):
    """``--weights``, the same default (auto) and rule in every command (engine.config.WEIGHTS_RULE)."""
    return click.option("--weights", default=DEFAULT_WEIGHTS, show_default=True, metavar=WEIGHTS_METAVAR,
                        help=weights_help(note))


def flags_of(field: str, config: type = CollideConfig) -> tuple[str, ...]:
    """The option's spellings of a config field: its metadata's ``flags``, else ``--field-name``
    (``min_steps`` -> ``--min-steps``; CollideConfig's ``k`` -> ``-k``)."""
    meta = config.__dataclass_fields__[field].metadata if field in config.__dataclass_fields__ else {}
    return meta.get("flags") or ("--" + field.replace("_", "-"),)


def flag_of(field: str, config: type = CollideConfig) -> str:
    """The option of a config field: ``min_steps`` -> ``--min-steps``, ``k`` -> ``-k``."""
    return flags_of(field, config)[0]


class OrNone(click.ParamType):
    """A value of ``inner``, or the word none (None): a ``X | None`` field."""

    def __init__(self, inner: click.ParamType):
        self.inner, self.name = inner, inner.name  # the help shows INTEGER, FLOAT, ... as before

    def get_metavar(self, *args, **kwargs):
        return self.inner.get_metavar(*args, **kwargs)

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        try:
            return self.inner.convert(value, param, ctx)
        except click.BadParameter:
            if isinstance(self.inner, click.Choice):  # its message lists the choices, none among them
                raise
            self.fail(f"must be {self.inner.name} or 'none', got {value!r}", param, ctx)


class CommaList(click.ParamType):
    """Comma-separated values of ``inner``: a ``tuple[X, ...]`` field (``16,32``)."""

    def __init__(self, inner: click.ParamType):
        self.inner, self.name = inner, "list"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(self.inner.convert(v.strip(), param, ctx) for v in str(value).split(",") if v.strip())
        except click.BadParameter:
            self.fail(f"must be comma-separated {self.inner.name}s such as 16,32, got {value!r}", param, ctx)


def _click_type(hint, meta: dict) -> dict:
    """click's keywords for a field of type ``hint``: its type, nargs, multiple, flag."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    choices = meta.get("choices")
    optional = origin in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(choices, Registry):  # its names, plug-ins included, read whenever click asks
        if origin is tuple:  # comma-separated names, each checked by the config (check_fields)
            return {"type": CommaList(click.STRING)}
        return {"type": RegistryChoice(choices)}
    if choices is not None:
        kind = click.Choice(["none" if c is None else c for c in choices])
        return {"type": OrNone(kind) if None in choices else kind}
    if hint is bool:
        return {"is_flag": True}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if typing.get_origin(args[0]) is tuple:  # repeated A:B pairs, parsed by the command
            return {"multiple": True, "type": str}
        return {"type": CommaList(click.types.convert_type(args[0]))}
    if origin is tuple:
        return {"nargs": len(args), "type": args[0]}
    kind = click.types.convert_type(hint)  # its bounds are the config's to check: the message names the option
    return {"type": OrNone(kind) if optional else kind}


def config_options(config: type, names: tuple[str, ...] | None = None, shown: dict[str, str] | None = None):
    """One click option per field of the dataclass ``config`` (``names``, in that order: the
    help's; default: every field whose metadata does not say ``cli=False``), derived from the
    field (nanoGPT's configurator): the name and spellings, the type (int, float, a choice, a
    pair, X | None with the word none, comma-separated X, ..., repeated A:B pairs), the
    default and the help, so that each has one source: the config. The parameter is named as
    the field. ``shown``: {field: how this command words its default}, where a field shared by
    several commands (``JudgeOptions.judge``) defaults to something else in one of them."""
    hints = typing.get_type_hints(config)
    fields = {f.name: f for f in dataclasses.fields(config)}
    chosen = names if names is not None else [n for n, f in fields.items() if f.metadata.get("cli", True)]

    def decorate(f):
        for name in reversed(chosen):
            field, meta = fields[name], fields[name].metadata
            kw = {"help": meta["help"], "default": field.default, "show_default": True, **_click_type(hints[name], meta)}
            if kw.get("multiple"):
                kw.update(default=(), show_default=False)
                kw["help"] += " [default: " + (" ".join(":".join(map(str, p)) for p in field.default) or "none") + "]"
            elif kw.get("is_flag"):
                kw.pop("show_default")
            elif isinstance(kw["type"], CommaList):
                kw["default"] = ",".join(map(str, field.default)) or ()  # (): none given
            elif field.default is None and isinstance(kw["type"], OrNone) and not meta.get("default_text"):
                kw["default"] = "none"  # shown as [default: none]
            if isinstance(meta.get("choices"), Registry):  # the registry's names and summaries
                kw["help"] += " " + meta["choices"].describe()
            default_text = (shown or {}).get(name, meta.get("default_text"))  # shown: this command's words
            if default_text:
                kw.update(show_default=False)
                kw["help"] += f" [default: {default_text}]"
            if meta.get("metavar"):
                kw["metavar"] = meta["metavar"]
            if meta.get("hidden"):
                kw["hidden"] = True
            f = click.option(*flags_of(name, config), name, **kw)(f)
        return f

    return decorate


def option_of(field: str, error: Exception) -> str:
    """How the user spelled the option of a config field in the command that runs: its long
    option (``--resize``; ``-k`` where that is the only one); a CollideConfig field that is no
    option here: collide's; else the field's own name."""
    ctx = click.get_current_context(silent=True)
    for p in ctx.command.params if ctx is not None else []:
        if p.name == field and isinstance(p, click.Option):
            return next((o for o in p.opts if o.startswith("--")), p.opts[0])
    return flag_of(field) if isinstance(error, CollideError) else field


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
    except USER_ERRORS as e:  # a config field's error names its option
        raise UserError(f"{option_of(e.field, e)} {e.problem}" if e.field else str(e)) from None
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


class Ticker:
    """Progress off a terminal (logs, CI, notebooks): one line at the first update, then at most
    every ``every`` seconds, and at the end, each with the elapsed time, the rate and the ETA
    (core.progress). ``clock`` is for tests."""

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
        rate, left = rate_of(done, spent, self.start_done), eta_seconds(done, total, spent, self.start_done)
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        eta = f", ETA {hms(left)}" if left is not None else ""
        speed = f", {rate:.3g} {self.unit or 'items'}/s" if rate > 0 else ""
        return f"{self.label}: {done}/{total}{pct}, {hms(spent)} elapsed{speed}{eta}" + (f"; {extra}" if extra else "")

    def __call__(self, done: int, total: int, extra: str = "") -> None:
        text = self.line(done, total, extra)
        if text is not None:
            click.echo(text, err=True)


class Progress:
    """The one display of a library's ``progress(done, total)`` callback in every command: a
    click bar (position, ETA) on a terminal; elsewhere (logs, CI) a Ticker line at most every
    LOG_EVERY seconds (``lines=False``: none, the caller prints its own); nothing when not
    ``enabled`` (-q). ``extra`` (the loss, the running jobs) is the bar's label, else the end of
    the ticker's line. A finished bar stays finished: its line is complete, and the next
    phase's bar starts below it."""

    def __init__(self, label: str, enabled: bool = True, unit: str = "", lines: bool = True):
        self.label, self.enabled, self.bar, self.done = label, enabled, None, 0
        self.ticker = None if sys.stderr.isatty() else Ticker(label, unit) if lines else False

    def __call__(self, done: int, total: int, extra: str = "") -> None:
        if not self.enabled or self.ticker is False or self.done >= total > 0:
            return
        if self.ticker is not None:
            self.ticker(done, total, extra)
            self.done = done
            return
        if self.bar is None:  # a label that changes (extra) shows from the first step on
            self.bar = click.progressbar(length=total, label="" if extra else self.label, show_eta=True,
                                         show_pos=True, file=sys.stderr)
            self.bar.__enter__()
        self.bar.label = extra or self.label
        self.bar.update(done - self.done)  # 0: the label changed, drawn again
        self.done = done
        if done >= total:
            self.close()

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
