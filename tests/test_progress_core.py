"""core/progress.py: the rate and ETA the CLI's tickers print, and their clock text."""
from patchcollide.core.progress import eta_seconds, hms, rate_of


def test_rate_and_eta():
    assert rate_of(10, 5.0) == 2.0 and rate_of(10, 0.0) == 0.0 and rate_of(10, 5.0, start_done=5) == 1.0
    assert eta_seconds(10, 30, 5.0) == 10.0  # 20 left at 2 per second
    assert eta_seconds(30, 30, 5.0) is None  # finished
    assert eta_seconds(0, 30, 5.0) is None and eta_seconds(3, 30, 0.0) is None  # no rate yet


def test_hms():
    assert hms(0) == "0:00" and hms(59.6) == "1:00" and hms(3599) == "59:59" and hms(3723) == "1:02:03"
