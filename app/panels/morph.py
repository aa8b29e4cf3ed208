"""Morphing: identity / expression sliders (principal directions in std units, or raw dimensions),
the 20 FaceScape expressions with a blend slider, random / mean / reset, A-B interpolation, presets."""

from __future__ import annotations

import numpy as np
from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.document import SLIDER_RANGE, Document
from imface.errors import UserError
from imface.session import FACESCAPE_EXPRESSIONS

SCALE = 100  # slider ticks per std unit
RANGE = SLIDER_RANGE  # +- std units


def slider_text(value: float) -> str:
    """The value beside a slider; codes beyond the range (a fitted face) say so, the handle sits
    at the end."""
    if abs(value) > RANGE + 5e-3:
        return f"{'>' if value > 0 else '<'}{np.sign(value) * RANGE:+.0f}"
    return f"{value:+.2f}"


class CodeSliders(QGroupBox):
    """One slider per direction of a code space; a drag is one undo step."""

    def __init__(self, doc: Document, space: str, title: str, parent=None):
        super().__init__(title, parent)
        self.doc, self.space = doc, space
        self.sliders: list[QSlider] = []
        self.labels: list[QLabel] = []
        self._syncing = False
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(4, 4, 4, 4)
        self.count = QSpinBox()
        self.count.setRange(1, 64)
        self.count.setValue(8)
        self.count.setPrefix("show ")
        self.count.setSuffix(" sliders")
        self.count.valueChanged.connect(self.rebuild)
        self.grid.addWidget(self.count, 0, 0, 1, 3)
        self.rebuild()

    def dims(self) -> int:
        fm = self.doc.face_model
        sp = fm.id_space if self.space == "id" else fm.exp_space
        return sp.mean.shape[0] if self.doc.raw_sliders else sp.std.shape[0]

    def rebuild(self):
        for w in self.sliders + self.labels:
            w.setParent(None)
            w.deleteLater()
        for w in self.findChildren(QLabel, "name"):
            w.setParent(None)
        self.sliders, self.labels = [], []
        n = min(self.count.value(), self.dims())
        prefix = "dim" if self.doc.raw_sliders else "PC"
        for k in range(n):
            name = QLabel(f"{prefix} {k + 1}")
            name.setObjectName("name")
            s = QSlider(Qt.Orientation.Horizontal)
            s.setRange(int(-RANGE * SCALE), int(RANGE * SCALE))
            s.setObjectName(f"{self.space}_slider_{k}")
            s.setToolTip(f"{prefix} {k + 1} of the {self.title().lower()} code, in standard deviations")
            s.sliderPressed.connect(self.doc.begin_drag)
            s.sliderReleased.connect(self.doc.end_drag)
            s.valueChanged.connect(lambda v, k=k: self._moved(k, v))
            value = QLabel("0.00")
            value.setMinimumWidth(38)
            self.grid.addWidget(name, k + 1, 0)
            self.grid.addWidget(s, k + 1, 1)
            self.grid.addWidget(value, k + 1, 2)
            self.sliders.append(s)
            self.labels.append(value)
        self.sync()

    def _moved(self, k: int, v: int):
        if self._syncing:
            return
        self.labels[k].setText(slider_text(v / SCALE))
        self.doc.set_slider(self.space, k, v / SCALE)

    def sync(self):
        """Show the document's codes (after undo, random, fit...)."""
        values = self.doc.sliders(self.space)
        self._syncing = True
        try:
            for k, (s, lab) in enumerate(zip(self.sliders, self.labels, strict=True)):
                v = float(values[k]) if k < len(values) else 0.0
                if not s.isSliderDown():
                    s.setValue(int(round(np.clip(v, -RANGE, RANGE) * SCALE)))
                lab.setText(slider_text(v))
        finally:
            self._syncing = False


class MorphPanel(QWidget):
    presetSaveRequested = pyqtSignal()
    presetLoadRequested = pyqtSignal()
    error = pyqtSignal(str)

    def __init__(self, doc: Document, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.rng = np.random.default_rng()
        outer = QVBoxLayout(self)
        outer.setContentsMargins(2, 2, 2, 2)

        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        outer.addWidget(self.model_label)

        row = QHBoxLayout()
        for text, slot in (("Random", self.random_face), ("Mean", doc.mean_face), ("Reset", self.reset_face)):
            b = QPushButton(text)
            b.setObjectName(f"btn_{text.lower()}")
            b.clicked.connect(slot)
            row.addWidget(b)
        outer.addLayout(row)
        self.raw = QCheckBox("Raw code dimensions (instead of principal directions)")
        self.raw.toggled.connect(self._raw_toggled)
        outer.addWidget(self.raw)

        # expressions
        box = QGroupBox("Expression (FaceScape)")
        g = QGridLayout(box)
        self.expr = QComboBox()
        self.expr.setObjectName("expression_combo")
        self.expr.addItems(FACESCAPE_EXPRESSIONS)
        self.blend = QSlider(Qt.Orientation.Horizontal)
        self.blend.setObjectName("expression_blend")
        self.blend.setRange(0, 100)
        self.blend.setValue(100)
        self.blend.sliderPressed.connect(doc.begin_drag)
        self.blend.sliderReleased.connect(doc.end_drag)
        self.blend.valueChanged.connect(self._apply_expression)
        self.expr.activated.connect(lambda _i: self._apply_expression())
        g.addWidget(QLabel("Expression"), 0, 0)
        g.addWidget(self.expr, 0, 1)
        g.addWidget(QLabel("Blend"), 1, 0)
        g.addWidget(self.blend, 1, 1)
        outer.addWidget(box)

        # sliders
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        inner = QWidget()
        lay = QVBoxLayout(inner)
        lay.setContentsMargins(0, 0, 0, 0)
        self.id_sliders = CodeSliders(doc, "id", "Identity")
        self.exp_sliders = CodeSliders(doc, "exp", "Expression code")
        lay.addWidget(self.id_sliders)
        lay.addWidget(self.exp_sliders)
        lay.addStretch(1)
        scroll.setWidget(inner)
        outer.addWidget(scroll, 1)

        # interpolation
        box = QGroupBox("Interpolate between two faces")
        g = QGridLayout(box)
        self.store_a = QPushButton("Store as A")
        self.store_b = QPushButton("Store as B")
        self.store_a.clicked.connect(lambda: doc.store_slot("A"))
        self.store_b.clicked.connect(lambda: doc.store_slot("B"))
        self.interp = QSlider(Qt.Orientation.Horizontal)
        self.interp.setObjectName("interpolation")
        self.interp.setRange(0, 100)
        self.interp.sliderPressed.connect(doc.begin_drag)
        self.interp.sliderReleased.connect(doc.end_drag)
        self.interp.valueChanged.connect(self._interpolate)
        self.slot_label = QLabel()
        g.addWidget(self.store_a, 0, 0)
        g.addWidget(self.store_b, 0, 1)
        g.addWidget(QLabel("A"), 1, 0, alignment=Qt.AlignmentFlag.AlignRight)
        g.addWidget(self.interp, 1, 1)
        g.addWidget(self.slot_label, 2, 0, 1, 2)
        outer.addWidget(box)

        row = QHBoxLayout()
        save, load = QPushButton("Save preset..."), QPushButton("Load preset...")
        save.clicked.connect(self.presetSaveRequested)
        load.clicked.connect(self.presetLoadRequested)
        row.addWidget(save)
        row.addWidget(load)
        outer.addLayout(row)

        doc.codesChanged.connect(lambda _i: self.sync())
        doc.modelChanged.connect(self.model_changed)
        doc.slotsChanged.connect(self._slots_changed)
        self.model_changed()
        self._slots_changed()

    def model_changed(self):
        fm = self.doc.face_model
        text = f"<b>Model:</b> {fm.label}"
        if not fm.trained:
            text += (
                "<br><span style='color:#e57373'>Untrained model: faces are not meaningful. "
                "Train one (Training panel) or open a checkpoint.</span>"
            )
        self.model_label.setText(text)
        have = set(fm.expression_codes)
        for i, name in enumerate(FACESCAPE_EXPRESSIONS):
            item = self.expr.model().item(i)
            item.setEnabled(name == "1_neutral" or name in have)
        self.id_sliders.rebuild()
        self.exp_sliders.rebuild()

    def _raw_toggled(self, on: bool):
        self.doc.raw_sliders = on
        self.id_sliders.rebuild()
        self.exp_sliders.rebuild()

    def random_face(self):
        self.doc.randomize(self.rng)

    def reset_face(self):
        """The mean face, neutral: the expression box goes back to neutral at full blend too."""
        self.doc.reset()
        self._show_neutral()

    def _show_neutral(self):
        for widget, value in ((self.expr, 0), (self.blend, 100)):
            widget.blockSignals(True)
            if widget is self.expr:
                widget.setCurrentIndex(value)
            else:
                widget.setValue(value)
            widget.blockSignals(False)

    def _apply_expression(self, *_):
        try:
            self.doc.set_expression(self.expr.currentText(), self.blend.value() / 100)
        except UserError as exc:
            self.error.emit(str(exc))

    def _interpolate(self, v: int):
        try:
            self.doc.interpolate(v / 100)
        except UserError as exc:
            self.error.emit(str(exc))

    def _slots_changed(self):
        s = self.doc.slots
        ok = s.get("A") is not None and s.get("B") is not None
        self.interp.setEnabled(ok)
        self.slot_label.setText(
            "A: "
            + ("stored" if s.get("A") is not None else "-")
            + "   B: "
            + ("stored" if s.get("B") is not None else "-")
        )

    def sync(self):
        self.id_sliders.sync()
        self.exp_sliders.sync()
        if self.doc.codes.neutral:  # undo / reset / fit back to neutral: the box follows
            self._show_neutral()
