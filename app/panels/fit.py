"""Fitting: open / drop a scan, automatic alignment (manual 5-point picking as fallback), the fit
with live loss, and the residual heat map summary."""

from __future__ import annotations

from PyQt6.QtCore import pyqtSignal
from PyQt6.QtWidgets import QCheckBox, QGridLayout, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from app.panels.common import LossPlot

LANDMARK_NAMES = (
    "right eye outer corner",
    "left eye outer corner",
    "nose tip",
    "right mouth corner",
    "left mouth corner",
)


class FitPanel(QWidget):
    openRequested = pyqtSignal()
    fitRequested = pyqtSignal()
    pickRequested = pyqtSignal()
    cancelRequested = pyqtSignal()
    detailToggled = pyqtSignal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        hint = QLabel(
            "Drop a scan (OBJ, PLY, STL, OFF, GLB, point cloud) on the window, or open one. "
            "It is aligned automatically and fitted; the fitted face becomes the current face."
        )
        hint.setWordWrap(True)
        lay.addWidget(hint)
        row = QHBoxLayout()
        self.open_btn = QPushButton("Open scan...")
        self.fit_btn = QPushButton("Fit")
        self.fit_btn.setObjectName("btn_fit")
        self.cancel_btn = QPushButton("Cancel")
        self.open_btn.clicked.connect(self.openRequested)
        self.fit_btn.clicked.connect(self.fitRequested)
        self.cancel_btn.clicked.connect(self.cancelRequested)
        for b in (self.open_btn, self.fit_btn, self.cancel_btn):
            row.addWidget(b)
        lay.addLayout(row)
        self.pick_btn = QPushButton("Pick 5 landmarks by hand (if the automatic alignment fails)")
        self.pick_btn.setCheckable(True)
        self.pick_btn.toggled.connect(lambda on: on and self.pickRequested.emit())
        lay.addWidget(self.pick_btn)
        self.pick_label = QLabel("")
        self.pick_label.setWordWrap(True)
        lay.addWidget(self.pick_label)
        g = QGridLayout()
        self.scan_label = QLabel("no scan")
        self.iter_label = QLabel("-")
        self.loss_label = QLabel("-")
        self.result_label = QLabel("-")
        self.result_label.setWordWrap(True)
        for r, (name, w) in enumerate(
            (
                ("Scan", self.scan_label),
                ("Iteration", self.iter_label),
                ("Loss", self.loss_label),
                ("Residual", self.result_label),
            )
        ):
            g.addWidget(QLabel(name), r, 0)
            g.addWidget(w, r, 1)
        lay.addLayout(g)
        self.detail_box = QCheckBox("Fitted detail on every face (follows morphs)")
        self.detail_box.setToolTip(
            "The fit's person-specific detail (lips, lids, wrinkles the codes miss), stored in "
            "template space: it stays on the face through every expression and morph"
        )
        self.detail_box.setEnabled(False)
        self.detail_box.toggled.connect(self.detailToggled)
        lay.addWidget(self.detail_box)
        self.plot = LossPlot(self, "fit loss")
        lay.addWidget(self.plot, 1)
        self.set_running(False, has_scan=False)

    def show_detail(self, available: bool, on: bool, text: str = ""):
        """The checkbox shows the document's state without echoing it back as a new edit."""
        self.detail_box.blockSignals(True)
        self.detail_box.setEnabled(available)
        self.detail_box.setChecked(on)
        self.detail_box.setToolTip(text or self.detail_box.toolTip())
        self.detail_box.blockSignals(False)

    def set_running(self, running: bool, has_scan: bool = True):
        self.fit_btn.setEnabled(not running and has_scan)
        self.cancel_btn.setEnabled(running)
        self.pick_btn.setEnabled(not running and has_scan)

    def on_progress(self, iteration: int, loss: float):
        self.iter_label.setText(str(iteration))
        self.loss_label.setText(f"{loss:.4g}")
        self.plot.add(iteration, loss)

    def on_progress_many(self, items):
        for iteration, loss in items:
            self.plot.series.setdefault("loss", [])
            if loss == loss and loss > 0:
                self.plot.series["loss"].append((float(iteration), float(loss)))
        self.iter_label.setText(str(items[-1][0]))
        self.loss_label.setText(f"{items[-1][1]:.4g}")
        self.plot.update()

    def prompt_landmark(self, k: int):
        if k < len(LANDMARK_NAMES):
            self.pick_label.setText(f"Right-click the {LANDMARK_NAMES[k]} ({k + 1}/5) on the scan.")
        else:
            self.pick_label.setText("5 landmarks picked: press Fit.")
