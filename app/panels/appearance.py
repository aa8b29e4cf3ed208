"""Appearance: the face's own colour (albedo in template space) from a coloured scan, shown on the
face through every slider; plain shading, clear, save and load."""

from __future__ import annotations

from PyQt6.QtCore import pyqtSignal
from PyQt6.QtWidgets import QCheckBox, QLabel, QPushButton, QVBoxLayout, QWidget


def _wrapped(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label


class AppearancePanel(QWidget):
    loadScanRequested = pyqtSignal()
    showToggled = pyqtSignal(bool)
    clearRequested = pyqtSignal()
    saveRequested = pyqtSignal()
    loadRequested = pyqtSignal()

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(
            _wrapped(
                "A coloured scan (PLY/OBJ vertex colours, OBJ+MTL or GLB texture, coloured points) is "
                "fitted and its colour moved to template space: it stays on the same features through "
                "every expression and identity slider, and exports carry it."
            )
        )
        self.load_scan = QPushButton("Load coloured scan...")
        self.load_scan.setObjectName("btn_load_coloured_scan")
        self.load_scan.clicked.connect(self.loadScanRequested)
        lay.addWidget(self.load_scan)
        self.show_colour = QCheckBox("Show the face's colour (off: plain shading)")
        self.show_colour.setObjectName("chk_show_albedo")
        self.show_colour.clicked.connect(self.showToggled)
        lay.addWidget(self.show_colour)
        for text, signal in (
            ("Clear colour", self.clearRequested),
            ("Save colour (albedo)...", self.saveRequested),
            ("Load colour (albedo)...", self.loadRequested),
        ):
            button = QPushButton(text)
            button.clicked.connect(signal)
            lay.addWidget(button)
        self.info = QLabel("No colour: faces show a neutral albedo")
        self.info.setObjectName("albedo_info")
        self.info.setWordWrap(True)
        lay.addWidget(self.info)
        lay.addStretch(1)

    def show_state(self, description: str, shown: bool):
        self.info.setText(description)
        self.show_colour.setChecked(shown)
