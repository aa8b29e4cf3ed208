"""Interactive use: a cancellable coarse-then-fine generator and latest-value coalescing."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from imface.extract.grid import (
    DEFAULT_CHUNK,
    BandResult,
    BandState,
    Cancelled,
    Mesh,
    SdfFn,
    coarse_stage,
    fine_stage,
    reuse_band,
)
from imface.model.imface import Codes, ImFace

_EMPTY = object()


def face_sdf(model: ImFace, codes: Codes, *, detail: bool = True) -> SdfFn:
    """sdf_fn for extraction: (N, 3) points -> (N,) SDF of one face (no grad); the codes are
    prepared once. Points move to the model's device and the result comes back to theirs."""
    prep = model.prepare(codes)
    device = model.template_landmarks.device

    def sdf(points: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.query(points.to(device), prep, detail=detail).sdf.to(points.device)

    return sdf


def face_mesh(model: ImFace, codes: Codes, resolution: int = 128) -> Mesh:
    """The face of these codes as one mesh (narrow band; largest connected piece)."""
    from imface.extract.grid import extract_narrow_band

    return extract_narrow_band(face_sdf(model, codes), resolution=resolution).mesh.largest_component()


def template_sdf(model: ImFace) -> SdfFn:
    """sdf_fn of the template face T (template space): the shared topology of `export-topology`."""
    device = model.template_landmarks.device

    def sdf(points: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.template_sdf(points.to(device)[None])[0].to(points.device)

    return sdf


def _cancel_check(cancel) -> Callable[[], bool] | None:
    if cancel is None:
        return None
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    return cancel


@dataclass
class BandCache:
    """Carries the band of the last refined mesh to the next `refine` call (band reuse)."""

    state: BandState | None = None
    last: BandResult | None = None


def refine(
    model: ImFace,
    codes: Codes,
    resolution: int = 256,
    coarse_resolution: int = 64,
    *,
    cancel: threading.Event | Callable[[], bool] | None = None,
    cache: BandCache | None = None,
    bound: float = 1.0,
    chunk: int = DEFAULT_CHUNK,
    band: float | None = None,
) -> Iterator[tuple[str, Mesh]]:
    """Yield ("coarse", mesh) after the coarse pass, then ("fine", mesh).

    With a `cache` holding a band for nearby codes, the band is reused when its check passes and
    only ("fine", mesh) is yielded (it costs less than the coarse pass would). Cancellation is
    checked between network chunks; a cancelled run just stops yielding.
    """
    check = _cancel_check(cancel)
    sdf_fn = face_sdf(model, codes)
    device = model.template_landmarks.device
    try:
        if cache is not None and cache.state is not None and cache.state.resolution == resolution:
            reused = reuse_band(sdf_fn, cache.state, chunk=chunk, device=device, cancel=check)
            if reused is not None:
                cache.state, cache.last = reused.state, reused
                yield "fine", reused.mesh
                return
        stage = coarse_stage(sdf_fn, resolution, coarse_resolution, bound, chunk, device, check)
        if check is not None and check():
            return
        yield "coarse", stage.mesh
        result = fine_stage(sdf_fn, stage, band, chunk, device, check)
        if cache is not None:
            cache.state, cache.last = result.state, result
        yield "fine", result.mesh
    except Cancelled:
        return


class LatestValue:
    """A one-slot mailbox: put() overwrites, take() returns the newest value once (else None).

    A slider stream puts every value; the single worker takes only the latest, so at most one
    extraction runs and stale requests are dropped.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._value: Any = _EMPTY
        self._ready = threading.Condition(self._lock)

    def put(self, value: Any) -> None:
        with self._lock:
            self._value = value
            self._ready.notify_all()

    def take(self) -> Any | None:
        with self._lock:
            value, self._value = self._value, _EMPTY
        return None if value is _EMPTY else value

    def wait(self, timeout: float | None = None) -> Any | None:
        """Block until a value is there (or timeout), then take it."""
        with self._lock:
            if self._value is _EMPTY:
                self._ready.wait(timeout)
            value, self._value = self._value, _EMPTY
        return None if value is _EMPTY else value

    def pending(self) -> bool:
        with self._lock:
            return self._value is not _EMPTY
