"""The one base class of patchcollide's user errors. Imports nothing.

Every error that a user's input or environment causes (a bad argument, a missing or foreign
file, a locked output, a full disk) derives from :class:`PatchcollideError` and says in one
line what is wrong and how to fix it. The CLI turns exactly these into one-line messages
with exit code 2; anything else is a bug and keeps its traceback.
"""


class PatchcollideError(Exception):
    """A user error; ``str(e)`` is a one-line message that says how to fix it. An error about
    one config field names it in ``field`` and says what is wrong in ``problem`` (the CLI then
    names the field's option instead: ``core.settings.field_error``)."""

    field: str | None = None
    problem: str | None = None


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its class name when empty), for the reason
    part of a one-line error."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def raise_first(checks, error) -> None:
    """Check arguments at the entrance: for the first ``(ok, *args)`` of ``checks`` whose ``ok``
    is false, raise ``error(*args)`` (an exception class or a function that makes one, e.g.
    ``(ok, message)`` with DigitsError, ``(ok, field, problem)`` with config.field_error)."""
    for ok, *args in checks:
        if not ok:
            raise error(*args)
