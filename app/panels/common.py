"""Small widgets shared by the panels."""

from __future__ import annotations

from PyQt6.QtCore import QPointF, Qt
from PyQt6.QtGui import QColor, QPainter, QPen, QPolygonF
from PyQt6.QtWidgets import QWidget


class LossPlot(QWidget):
    """A minimal live line plot (log-scale y) drawn with QPainter: no plotting dependency."""

    def __init__(self, parent=None, title: str = "loss"):
        super().__init__(parent)
        self.title = title
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.colors = [QColor("#4fc3f7"), QColor("#ffb74d"), QColor("#81c784"), QColor("#e57373")]
        self.setMinimumHeight(120)

    def clear(self):
        self.series = {}
        self.update()

    def add(self, x: float, y: float, name: str = "loss"):
        if y is None or y != y or y <= 0:
            return
        self.series.setdefault(name, []).append((float(x), float(y)))
        self.update()

    def points(self, name: str = "loss"):
        return list(self.series.get(name, []))

    def paintEvent(self, event):  # noqa: N802 - Qt API
        import math

        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#1e1f22"))
        p.setPen(QColor("#bbbbbb"))
        p.drawText(6, 14, self.title)
        allpts = [pt for s in self.series.values() for pt in s]
        if len(allpts) < 2:
            p.drawText(6, 30, "no data yet")
            p.end()
            return
        xs = [x for x, _ in allpts]
        ys = [math.log10(y) for _, y in allpts]
        x0, x1 = min(xs), max(xs) or 1
        y0, y1 = min(ys), max(ys)
        if x1 == x0:
            x1 = x0 + 1
        if y1 - y0 < 1e-6:
            y0, y1 = y0 - 0.5, y1 + 0.5
        w, h = self.width() - 50, self.height() - 30
        for k, (name, pts) in enumerate(self.series.items()):
            poly = QPolygonF(
                [
                    QPointF(44 + (x - x0) / (x1 - x0) * w, 20 + (1 - (math.log10(y) - y0) / (y1 - y0)) * h)
                    for x, y in pts
                ]
            )
            p.setPen(QPen(self.colors[k % len(self.colors)], 1.5))
            p.drawPolyline(poly)
            p.drawText(self.width() - 110, 14 + 12 * k, f"{name} {pts[-1][1]:.3g}")
        p.setPen(QColor("#888888"))
        p.drawText(2, 26, f"{10**y1:.2g}")
        p.drawText(2, 20 + h, f"{10**y0:.2g}")
        p.drawText(44, self.height() - 2, f"{x0:g}")
        p.drawText(self.width() - 60, self.height() - 2, f"{x1:g}")
        p.end()


def hline(parent=None) -> QWidget:
    from PyQt6.QtWidgets import QFrame

    f = QFrame(parent)
    f.setFrameShape(QFrame.Shape.HLine)
    return f


ALIGN_LEFT = Qt.AlignmentFlag.AlignLeft
