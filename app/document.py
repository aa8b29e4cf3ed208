"""The document: what the user edits (codes, scan, fit, colours), with undo/redo.

Pure model (QObject + QUndoStack, no widgets): every edit is a command; a slider drag pushes
commands with one merge key, so the whole drag is one undo step. Views listen to the signals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PyQt6.QtCore import QObject, pyqtSignal
from PyQt6.QtGui import QUndoCommand, QUndoStack

from imface.errors import UserError
from imface.extract import Mesh
from imface.session import Albedo, DetailMap, FaceCodes, FitOutcome, LoadedScan, Session

PRESET_FORMAT = "imface-preset/1"
SLIDER_RANGE = 3.0  # sliders span +- 3 standard deviations; values are clamped to it


class SetCommand(QUndoCommand):
    """Set one document attribute. Commands with the same non-None merge key merge into one."""

    ID = 4711

    def __init__(self, doc: Document, attr: str, new: Any, old: Any, text: str, merge_key=None):
        super().__init__(text)
        self.doc, self.attr, self.new, self.old, self.merge_key = doc, attr, new, old, merge_key

    def id(self) -> int:  # noqa: A003 - Qt API
        return self.ID if self.merge_key is not None else -1

    def mergeWith(self, other: QUndoCommand) -> bool:  # noqa: N802 - Qt API
        if not isinstance(other, SetCommand) or other.merge_key != self.merge_key or other.attr != self.attr:
            return False
        self.new = other.new
        return True

    def redo(self):
        # live (a morph, refined on release) only while its own drag goes on; a redo later is final
        live = self.merge_key is not None and self.merge_key == self.doc._drag_key
        self.doc._apply(self.attr, self.new, interactive=live)

    def undo(self):
        self.doc._apply(self.attr, self.old, interactive=False)


class Document(QObject):
    codesChanged = pyqtSignal(bool)  # interactive (a drag is in progress)
    interactionFinished = pyqtSignal()
    modelChanged = pyqtSignal()
    scanChanged = pyqtSignal()
    fitChanged = pyqtSignal()
    colorModeChanged = pyqtSignal()
    albedoChanged = pyqtSignal()
    detailChanged = pyqtSignal()
    slotsChanged = pyqtSignal()

    def __init__(self, face_model: Session, parent: QObject | None = None):
        super().__init__(parent)
        self.undo_stack = QUndoStack(self)
        self.face_model = face_model
        self.codes: FaceCodes = face_model.mean_codes()
        self.scan: LoadedScan | None = None
        self.fit: FitOutcome | None = None
        self.color_mode: str = "shaded"  # shaded | coords | checker | uv | image | albedo
        self.texture_image: np.ndarray | None = None
        self.albedo: Albedo | None = None  # the face's own colour in template space
        self.detail: DetailMap | None = None  # a fitted person's detail, on every face shown
        self.slots: dict[str, FaceCodes | None] = {"A": None, "B": None}
        self.mesh: Mesh | None = None  # the current face mesh (derived from codes; not undone)
        self.face_colors: np.ndarray | None = None  # painted colours of `mesh` (derived)
        self._drag_serial = 0
        self._drag_key = None
        self.raw_sliders = False

    # -- model ---------------------------------------------------------------------------------
    def set_face_model(self, fm: Session):
        """A new checkpoint: codes from other models cannot be undone into it; clear history."""
        self.face_model = fm
        self.undo_stack.clear()
        self.codes = fm.mean_codes()
        self.fit = None
        self.slots = {"A": None, "B": None}
        self.mesh = None
        self.face_colors = None
        self.albedo = None  # template space belongs to its model
        self.detail = None
        if self.color_mode == "albedo":
            self.color_mode = "shaded"
        self.modelChanged.emit()
        self.codesChanged.emit(False)
        self.fitChanged.emit()
        self.detailChanged.emit()
        self.slotsChanged.emit()

    # -- applying (only commands call this) ----------------------------------------------------
    def _apply(self, attr: str, value: Any, interactive: bool):
        if attr == "codes":
            self.codes = value.copy()
            self.codesChanged.emit(interactive)
        elif attr == "scan":
            self.scan = value
            self.scanChanged.emit()
        elif attr == "fit":
            self.fit = value
            self.fitChanged.emit()
        elif attr == "fit_and_codes":
            self.fit, codes = value
            self.codes = codes.copy()
            self.fitChanged.emit()
            self.codesChanged.emit(False)
        elif attr == "color_mode":
            self.color_mode, self.texture_image = value
            self.colorModeChanged.emit()
        elif attr == "albedo":
            self.albedo, self.color_mode = value
            self.albedoChanged.emit()
            self.colorModeChanged.emit()
        elif attr == "detail":
            self.detail = value
            self.detailChanged.emit()
        elif attr == "slots":
            self.slots = dict(value)
            self.slotsChanged.emit()
        else:  # pragma: no cover - programming error
            raise KeyError(attr)

    # -- edits -----------------------------------------------------------------------------------
    def begin_drag(self):
        self._drag_serial += 1
        self._drag_key = ("drag", self._drag_serial)

    def end_drag(self):
        was = self._drag_key is not None
        self._drag_key = None
        if was:
            self.interactionFinished.emit()

    @property
    def dragging(self) -> bool:
        return self._drag_key is not None

    def set_codes(self, codes: FaceCodes, text: str = "Edit face", merge: bool | None = None):
        if codes.equals(self.codes):
            return
        key = self._drag_key if merge is None else (self._drag_key if merge else None)
        self.undo_stack.push(SetCommand(self, "codes", codes.copy(), self.codes.copy(), text, key))

    def set_slider(self, space: str, k: int, value: float):
        """Move slider k of 'id' or 'exp' to `value` std units (PCA or raw mode)."""
        fm = self.face_model
        c = self.codes.copy()
        value = float(np.clip(value, -SLIDER_RANGE, SLIDER_RANGE))
        if space == "id":
            c.z_id = fm.id_space.with_slider(c.z_id, k, value, self.raw_sliders)
        else:
            c.z_exp = fm.exp_space.with_slider(c.z_exp, k, value, self.raw_sliders)
            c.neutral = False
        name = "identity" if space == "id" else "expression"
        self.set_codes(c, f"Move {name} slider {k + 1}")

    def sliders(self, space: str) -> np.ndarray:
        fm = self.face_model
        if space == "id":
            return fm.id_space.to_sliders(self.codes.z_id, self.raw_sliders)
        return fm.exp_space.to_sliders(self.codes.z_exp, self.raw_sliders)

    def set_expression(self, label: str, blend: float):
        """Blend from neutral (blend 0) to the expression `label` (blend 1)."""
        fm = self.face_model
        c = self.codes.copy()
        target = fm.expression_codes.get(label)
        if label.endswith("neutral") or blend <= 0 or target is None:
            if target is None and not label.endswith("neutral") and blend > 0:
                raise UserError(f"the checkpoint has no codes for expression {label}")
            c.neutral = True
            c.z_exp = fm.exp_space.mean.copy()
        else:
            base = fm.exp_space.mean
            c.neutral = False
            c.z_exp = ((1 - blend) * base + blend * target).astype(np.float32)
        self.set_codes(c, f"Expression {label} ({blend:.0%})")

    def randomize(self, rng: np.random.Generator, what: str = "both"):
        fm = self.face_model
        c = self.codes.copy()
        if what in ("both", "id"):
            c.z_id = _within_range(fm.id_space, fm.id_space.sample(rng))
        if what in ("both", "exp"):
            c.z_exp = _within_range(fm.exp_space, fm.exp_space.sample(rng))
            c.neutral = False
        self.set_codes(c, "Random face", merge=False)

    def mean_face(self):
        c = self.codes.copy()
        c.z_id = self.face_model.id_space.mean.copy()
        self.set_codes(c, "Mean identity", merge=False)

    def reset(self):
        self.set_codes(self.face_model.mean_codes(), "Reset face", merge=False)

    def store_slot(self, name: str):
        slots = dict(self.slots)
        slots[name] = self.codes.copy()
        self.undo_stack.push(SetCommand(self, "slots", slots, dict(self.slots), f"Store face {name}"))

    def interpolate(self, t: float):
        a, b = self.slots.get("A"), self.slots.get("B")
        if a is None or b is None:
            raise UserError("store two faces (A and B) before interpolating")
        self.set_codes(a.lerp(b, t), f"Interpolate A-B ({t:.0%})")

    def set_color_mode(self, mode: str, image: np.ndarray | None = None):
        new = (mode, image)
        old = (self.color_mode, self.texture_image)
        if mode == self.color_mode and image is self.texture_image:
            return
        self.undo_stack.push(SetCommand(self, "color_mode", new, old, f"Colour: {mode}"))

    def set_albedo(self, albedo: Albedo | None, text: str = ""):
        """Give the face its colour (shown at once) or, with None, take it away (plain shading)."""
        mode = (
            "albedo" if albedo is not None else ("shaded" if self.color_mode == "albedo" else self.color_mode)
        )
        text = text or ("Apply colour" if albedo is not None else "Clear colour")
        self.undo_stack.push(SetCommand(self, "albedo", (albedo, mode), (self.albedo, self.color_mode), text))

    def set_scan(self, scan: LoadedScan | None):
        self.undo_stack.beginMacro("Open scan" if scan else "Close scan")
        self.undo_stack.push(SetCommand(self, "scan", scan, self.scan, "Open scan"))
        if self.fit is not None:
            self.undo_stack.push(SetCommand(self, "fit", None, self.fit, "Clear fit"))
        self.undo_stack.endMacro()

    def apply_fit(self, outcome: FitOutcome):
        """The fitted face becomes the current face; a coloured scan's colour comes with it (one
        undo step)."""
        self.undo_stack.beginMacro("Fit scan")
        self.undo_stack.push(
            SetCommand(
                self,
                "fit_and_codes",
                (outcome, outcome.codes.copy()),
                (self.fit, self.codes.copy()),
                "Fit scan",
            )
        )
        if outcome.albedo is not None:
            self.set_albedo(outcome.albedo, "Colour of the fitted scan")
        if outcome.detail is not None:
            self.set_detail(outcome.detail, "Detail of the fitted scan")
        self.undo_stack.endMacro()

    def set_detail(self, detail: DetailMap | None, text: str = ""):
        """Put a fitted person's detail on every face (None: the model's surface only)."""
        if detail is self.detail:
            return
        text = text or ("Apply detail" if detail is not None else "Drop detail")
        self.undo_stack.push(SetCommand(self, "detail", detail, self.detail, text))

    # -- presets -----------------------------------------------------------------------------------
    def preset_dict(self, name: str = "") -> dict:
        return {
            "format": PRESET_FORMAT,
            "name": name,
            "checkpoint_sha256": self.face_model.sha256,
            "codes": self.codes.to_json(),
        }

    def save_preset(self, path: str | Path, name: str = ""):
        Path(path).write_text(json.dumps(self.preset_dict(name or Path(path).stem), indent=1))

    def read_preset(self, path: str | Path) -> tuple[FaceCodes, bool]:
        """-> (codes, same_checkpoint). Raises UserError on a bad file or wrong dimensions."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if data.get("format") != PRESET_FORMAT:
                raise ValueError("not an ImFace preset")
            codes = FaceCodes.from_json(data["codes"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path.name}: not a readable preset ({exc})") from exc
        fm = self.face_model
        if codes.z_id.shape != (fm.id_dim,) or codes.z_exp.shape != (fm.exp_dim,):
            raise UserError(
                f"{path.name}: made for a model with other code sizes "
                f"({codes.z_id.size}/{codes.z_exp.size}, this model {fm.id_dim}/{fm.exp_dim})"
            )
        return codes, data.get("checkpoint_sha256") == fm.sha256

    def load_preset_codes(self, codes: FaceCodes, name: str):
        self.set_codes(codes, f"Load preset {name}", merge=False)


def _within_range(space, z: np.ndarray) -> np.ndarray:
    """A random code whose slider values stay on the sliders (+- SLIDER_RANGE)."""
    t = np.clip(space.to_sliders(z), -SLIDER_RANGE, SLIDER_RANGE)
    return (space.mean + (t * space.std) @ space.basis).astype(np.float32)
