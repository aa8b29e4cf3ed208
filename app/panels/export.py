"""Export: the current mesh (OBJ / PLY / STL / GLB, in millimetres), the expression rig, a screenshot."""

from __future__ import annotations

from PyQt6.QtCore import pyqtSignal
from PyQt6.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget


def _wrapped(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label


class ExportPanel(QWidget):
    meshRequested = pyqtSignal()
    rigRequested = pyqtSignal()
    screenshotRequested = pyqtSignal()

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(
            _wrapped(
                "OBJ, PLY and STL are written in millimetres, GLB in metres (glTF);\n"
                "the unit is in a .json sidecar. OBJ, PLY and GLB keep the vertex colours; STL has none."
            )
        )
        for text, sig in (
            ("Export mesh...", self.meshRequested),
            ("Export expression rig (20 FaceScape expressions)...", self.rigRequested),
            ("Save screenshot...", self.screenshotRequested),
        ):
            b = QPushButton(text)
            b.clicked.connect(sig)
            lay.addWidget(b)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        lay.addWidget(self.info)
        lay.addStretch(1)
