"""Correspondence: colour by template coordinates or paint a texture on the template; pick a point
on one face and see its match on the other."""

from __future__ import annotations

from PyQt6.QtCore import pyqtSignal
from PyQt6.QtWidgets import QCheckBox, QComboBox, QLabel, QVBoxLayout, QWidget

MODES = {
    "Plain shading": "shaded",
    "Template coordinates": "coords",
    "Checker texture": "checker",
    "UV grid texture": "uv",
    "Image texture...": "image",
    "Face colour (albedo)": "albedo",
}


def _wrapped(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label


class CorrespondencePanel(QWidget):
    modeRequested = pyqtSignal(str)
    compareToggled = pyqtSignal(bool)
    pickToggled = pyqtSignal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(
            _wrapped(
                "Colours are painted in template space, so they follow the face "
                "through morphs and onto fitted scans."
            )
        )
        self.mode = QComboBox()
        self.mode.setObjectName("color_mode")
        self.mode.addItems(list(MODES))
        self.mode.activated.connect(lambda i: self.modeRequested.emit(MODES[self.mode.itemText(i)]))
        lay.addWidget(self.mode)
        self.compare = QCheckBox("Show face B beside the current face")
        self.compare.toggled.connect(self.compareToggled)
        lay.addWidget(self.compare)
        self.pick = QCheckBox("Right-click a point to see its match on the other face")
        self.pick.toggled.connect(self.pickToggled)
        lay.addWidget(self.pick)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        lay.addWidget(self.info)
        lay.addStretch(1)

    def show_mode(self, mode: str):
        for i in range(self.mode.count()):
            if MODES[self.mode.itemText(i)] == mode:
                self.mode.setCurrentIndex(i)
