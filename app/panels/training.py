"""Training: choose a corpus, run training in a separate process with a live loss plot, stop,
resume, and load the result."""

from __future__ import annotations

import tempfile
from pathlib import Path

from PyQt6.QtCore import pyqtSignal
from PyQt6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.panels.common import LossPlot
from app.training_process import TrainingProcess


class TrainingPanel(QWidget):
    loadRequested = pyqtSignal(str)
    error = pyqtSignal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.proc = TrainingProcess(self)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        g = QGridLayout()
        self.synth = QRadioButton("Synthetic identities")
        self.facescape = QRadioButton("FaceScape folder")
        self.synth.setChecked(True)
        grp = QButtonGroup(self)
        grp.addButton(self.synth)
        grp.addButton(self.facescape)
        self.identities = QSpinBox()
        self.identities.setRange(1, 10000)
        self.identities.setValue(20)
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("folder with <id>/models_reg/<k>_<name>.obj")
        browse = QPushButton("...")
        browse.clicked.connect(self._browse)
        self.epochs = QSpinBox()
        self.epochs.setRange(0, 100000)
        self.epochs.setValue(0)
        self.epochs.setSpecialValueText("default")
        self.preset = QComboBox()
        self.preset.addItems(["tiny", "default", "paper"])
        self.preset.setCurrentText("default")
        self.preset.setToolTip("network size: tiny trains in minutes on a CPU; paper = ImFace sizes")
        self.work = QLineEdit(str(Path(tempfile.gettempdir()) / "imface-training"))
        g.addWidget(self.synth, 0, 0)
        g.addWidget(self.identities, 0, 1)
        g.addWidget(self.facescape, 1, 0)
        g.addWidget(self.folder, 1, 1)
        g.addWidget(browse, 1, 2)
        g.addWidget(QLabel("Epochs"), 2, 0)
        g.addWidget(self.epochs, 2, 1)
        g.addWidget(QLabel("Network"), 3, 0)
        g.addWidget(self.preset, 3, 1)
        g.addWidget(QLabel("Work folder"), 4, 0)
        g.addWidget(self.work, 4, 1, 1, 2)
        lay.addLayout(g)
        row = QHBoxLayout()
        self.start_btn = QPushButton("Train")
        self.stop_btn = QPushButton("Stop")
        self.resume_btn = QPushButton("Resume")
        self.load_btn = QPushButton("Load result")
        self.start_btn.clicked.connect(lambda: self.start(resume=False))
        self.resume_btn.clicked.connect(lambda: self.start(resume=True))
        self.stop_btn.clicked.connect(self.proc.stop)
        self.load_btn.clicked.connect(self._load)
        for b in (self.start_btn, self.stop_btn, self.resume_btn, self.load_btn):
            row.addWidget(b)
        lay.addLayout(row)
        self.state = QLabel("idle")
        lay.addWidget(self.state)
        self.plot = LossPlot(self, "training loss")
        lay.addWidget(self.plot, 1)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        lay.addWidget(self.log, 1)
        self.proc.logged.connect(self._logged)
        self.proc.text.connect(self.log.appendPlainText)
        self.proc.stateChanged.connect(self._state)
        self.proc.stepStarted.connect(lambda t: self.state.setText(f"running: {t}"))
        self._state("idle")

    def _browse(self):
        d = QFileDialog.getExistingDirectory(self, "FaceScape folder")
        if d:
            self.folder.setText(d)
            self.facescape.setChecked(True)

    def start(self, resume: bool):
        if self.facescape.isChecked() and not self.folder.text().strip() and not resume:
            self.error.emit("choose a FaceScape folder first")
            return
        steps, run = TrainingProcess.plan(
            "synthetic" if self.synth.isChecked() else "facescape",
            self.folder.text().strip(),
            self.identities.value(),
            Path(self.work.text()),
            resume,
            self.epochs.value() or None,
            self.preset.currentText(),
        )
        if not resume:
            self.plot.clear()
        self.proc.start(steps, run)

    def _logged(self, rec: dict):
        x = rec.get("step", rec.get("epoch", rec.get("iteration")))
        for key in ("loss", "total", "loss_total"):
            if key in rec and x is not None:
                self.plot.add(float(x), float(rec[key]), "loss")
                break
        for key in ("sdf", "loss_sdf"):
            if key in rec and x is not None:
                self.plot.add(float(x), float(rec[key]), "sdf")

    def _state(self, state: str):
        self.state.setText(state)
        running = state == "running"
        self.start_btn.setEnabled(not running)
        self.resume_btn.setEnabled(not running)
        self.stop_btn.setEnabled(running)
        self.load_btn.setEnabled(not running)

    def _load(self):
        ckpt = self.proc.checkpoint()
        if ckpt is None:
            run = Path(self.work.text()) / "run"
            found = (
                sorted(p for p in run.rglob("*.safetensors") if not p.name.startswith("state"))
                if run.exists()
                else []
            )
            ckpt = found[-1] if found else None
        if ckpt is None:
            self.error.emit("no checkpoint written yet in the work folder")
            return
        self.loadRequested.emit(str(ckpt))
