"""Progress arithmetic without a display: the rate, the time left and its clock text.

The CLI's bars and tickers (cli/common.py's Ticker, cli/batch.py's per-job lines) print these;
a library caller can compute the same from its own ``progress(done, total)`` callback.
"""
from __future__ import annotations


def rate_of(done: int, seconds: float, start_done: int = 0) -> float:
    """Items per second since ``start_done`` items were done, ``seconds`` ago (0.0 before any time has passed)."""
    return (done - start_done) / seconds if seconds > 0 else 0.0


def eta_seconds(done: int, total: int, seconds: float, start_done: int = 0) -> float | None:
    """Seconds left at the rate since ``start_done`` (``rate_of``); None when finished or when
    the rate is not known yet."""
    rate = rate_of(done, seconds, start_done)
    return (total - done) / rate if rate > 0 and done < total else None


def hms(s: float) -> str:
    """Seconds as M:SS, or H:MM:SS from an hour on (rounded to the second)."""
    s = round(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
