"""Event-loop latency probe: a timer that should fire every `interval_ms`; the largest gap between
ticks is how long the GUI was unresponsive."""

from __future__ import annotations

import time

from PyQt6.QtCore import QObject, QTimer


class LatencyProbe(QObject):
    def __init__(self, interval_ms: int = 10, parent=None):
        super().__init__(parent)
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.max_gap_ms = 0.0
        self.ticks = 0
        self.gaps: list[float] = []
        self.worst: tuple[float, float] = (0.0, 0.0)  # perf_counter span of the longest gap
        self._last = None

    def start(self):
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self):
        self.timer.stop()

    def _tick(self):
        now = time.perf_counter()
        gap = (now - self._last) * 1000
        self._last = now
        self.ticks += 1
        self.gaps.append(gap)
        if gap > self.max_gap_ms:
            self.max_gap_ms, self.worst = gap, (now - gap / 1000, now)

    def percentile(self, q: float) -> float:
        import numpy as np

        return float(np.percentile(self.gaps, q)) if self.gaps else 0.0


def warm_up():
    """Pay torch's one-time costs (lazy imports of the optimisers and autograd, first kernels) on the
    GUI thread at start-up, before the window shows, so the first fit does not stall the event loop
    while they run under the GIL in a worker."""
    import torch
    import torch.optim  # noqa: F401

    x = torch.zeros(4, 3, requires_grad=True)
    opt = torch.optim.Adam([x], lr=1e-3)
    loss = (torch.sin(x @ torch.ones(3, 2)) ** 2).mean()
    loss.backward()
    opt.step()
    import importlib

    # the modules a fit / extraction imports on first use: importing them in a worker thread
    # holds the GIL for whole seconds (a measured 1.6 s stall in the first real fit)
    for name in ("imface.session", "imface.metrics", "imface.samples.preprocess", "scipy.spatial", "trimesh"):
        importlib.import_module(name)
