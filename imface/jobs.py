"""One shape for every long job (re-extraction, fit, training, synth, prepare, eval).

A job is a generator that yields ``Progress`` records and *returns* its result (the value of
``StopIteration``). Whoever drives it decides how to show progress (tqdm on the CLI, a progress
bar in the editor) and cancels it by closing the generator: the job sees ``GeneratorExit`` at its
current ``yield``, cleans up in its ``finally`` blocks and writes nothing half-done.

    job = fit_job(scan, model)            # nothing runs yet
    result = drive(job, on_progress)      # runs to the end, or raises what the job raised
    job.close()                           # cancels (from the thread that drives it)
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Progress:
    """Where a job stands. ``done``/``total`` count the job's own unit (iterations, scans,
    steps); ``total`` is None when unknown. ``values`` carries live figures (loss, ...) and
    ``preview`` an optional intermediate result (a mesh while fitting)."""

    stage: str
    done: int = 0
    total: int | None = None
    message: str = ""
    values: dict[str, float] = field(default_factory=dict)
    preview: Any = None

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(max(self.done / self.total, 0.0), 1.0)

    def line(self) -> str:
        """A one-line human summary (status bars, logs)."""
        count = f" {self.done}/{self.total}" if self.total else (f" {self.done}" if self.done else "")
        figures = ", ".join(f"{k} {v:.4g}" for k, v in self.values.items())
        return " ".join(p for p in (f"{self.stage}{count}", self.message, figures) if p)


Job = Generator[Progress, None, T]


class Cancelled(Exception):
    """Raised by ``drive`` when its ``should_stop`` says so; the job has been closed."""


def drive(
    job: Job[T],
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> T:
    """Run a job to its end and return its result. ``should_stop`` is polled after every
    record; when it answers True the job is closed and ``Cancelled`` raised."""
    try:
        while True:
            record = next(job)
            if on_progress is not None:
                on_progress(record)
            if should_stop is not None and should_stop():
                job.close()
                raise Cancelled(record.stage)
    except StopIteration as stop:
        return stop.value


def drive_with_tqdm(
    job: Job[T],
    desc: str | None = None,
    disable: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> T:
    """The CLI's way to show a job: one tqdm bar per stage (`on_progress` sees every record too)."""
    from tqdm import tqdm

    bar = None
    stage = None

    def show(p: Progress) -> None:
        nonlocal bar, stage
        if p.stage != stage:
            if bar is not None:
                bar.close()
            stage = p.stage
            bar = tqdm(total=p.total, desc=desc or p.stage, disable=disable, leave=False)
        bar.n = p.done
        if p.values:
            bar.set_postfix({k: f"{v:.4g}" for k, v in p.values.items()}, refresh=False)
        bar.refresh()
        if on_progress is not None:
            on_progress(p)

    try:
        return drive(job, show)
    finally:
        if bar is not None:
            bar.close()


def echo(job: Job[T], wanted: Callable[[Progress], bool]) -> Job[T]:
    """The same job, printing the message of each record `wanted` picks above the CLI's bar
    (a per-item log that survives an interrupted run)."""
    from tqdm import tqdm

    try:
        while True:
            record = next(job)
            if wanted(record):
                tqdm.write(record.message)
            yield record
    except StopIteration as stop:
        return stop.value
    finally:
        job.close()
