import pytest

from imface.jobs import Cancelled, Progress, drive


def counting_job(n, cleaned):
    try:
        for i in range(n):
            yield Progress("count", i + 1, n, values={"i": float(i)})
        return "done"
    finally:
        cleaned.append(True)


def test_drive_returns_the_result_and_reports_every_step():
    seen, cleaned = [], []
    assert drive(counting_job(3, cleaned), seen.append) == "done"
    assert [p.done for p in seen] == [1, 2, 3] and seen[-1].fraction == 1.0
    assert cleaned == [True]


def test_stopping_closes_the_job_so_it_cleans_up():
    seen, cleaned = [], []
    with pytest.raises(Cancelled):
        drive(counting_job(100, cleaned), seen.append, should_stop=lambda: len(seen) >= 2)
    assert len(seen) == 2 and cleaned == [True]


def test_progress_line_is_readable():
    assert Progress("fit", 5, 10, "aligning", {"loss": 0.5}).line() == "fit 5/10 aligning loss 0.5"
