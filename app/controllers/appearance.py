"""Appearance controller (beside the Appearance panel): load a coloured scan through the fit
flow (its colour comes with the fit as one undo step), show or hide the colour, clear, save and
load albedo files. The colour itself is painted by the correspondence controller's path, so it
follows morphs and re-extractions like every other paint."""

from __future__ import annotations

from PyQt6.QtCore import QObject
from PyQt6.QtWidgets import QFileDialog

from imface.errors import UserError
from imface.session import Albedo

ALBEDO_FILTER = "Albedo (*.safetensors)"


class AppearanceController(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.w = window
        self.face_after_fit = False  # a scan loaded here: show the coloured face once fitted
        panel, doc = window.appearance_panel, window.doc
        panel.loadScanRequested.connect(self.load_scan_dialog)
        panel.showToggled.connect(self.show_colour)
        panel.clearRequested.connect(lambda: doc.set_albedo(None))
        panel.saveRequested.connect(self.save_dialog)
        panel.loadRequested.connect(self.load_dialog)
        doc.albedoChanged.connect(self._refresh)
        doc.fitChanged.connect(self._fit_changed)
        doc.colorModeChanged.connect(self._refresh)
        doc.modelChanged.connect(self._refresh)

    def load_scan_dialog(self):
        from app.controllers.fit import SCAN_FILTER

        path, _ = QFileDialog.getOpenFileName(self.w, "Open coloured scan", "", SCAN_FILTER)
        if path:
            self.load_scan(path)

    def load_scan(self, path: str):
        """Load and fit (the Fit panel's flow); a coloured scan's colour comes with the fit."""
        self.face_after_fit = True
        self.w.fit.open_scan(path)

    def show_colour(self, on: bool):
        doc = self.w.doc
        if on and doc.albedo is None:
            self.w.set_status("No colour yet: load a coloured scan; the face shows a neutral albedo")
        doc.set_color_mode("albedo" if on else "shaded")

    def save_dialog(self):
        albedo = self.w.doc.albedo
        if albedo is None:
            self.w.show_error("Colour", "there is no colour to save: load a coloured scan first")
            return
        path, _ = QFileDialog.getSaveFileName(self.w, "Save colour", "face.albedo.safetensors", ALBEDO_FILTER)
        if path:
            self.save(path)

    def save(self, path: str):
        try:
            self.w.doc.albedo.save(path, {"checkpoint_sha256": self.w.doc.face_model.sha256})
        except (OSError, UserError) as exc:
            self.w.show_error("Save colour", str(exc))
            return
        self.w.set_status(f"Colour saved to {path}")

    def load_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self.w, "Load colour", "", ALBEDO_FILTER)
        if path:
            self.load(path)

    def load(self, path: str):
        try:
            albedo = Albedo.load(path)
        except UserError as exc:
            self.w.show_error("Load colour", str(exc))
            return
        self.w.doc.set_albedo(albedo, "Load colour")

    def _fit_changed(self):
        w, fit = self.w, self.w.doc.fit
        if fit is None or not self.face_after_fit:
            return
        self.face_after_fit = False
        w.set_view_mode("face")
        if fit.albedo is None:
            w.set_status("The scan has no colour: the fitted face keeps a neutral albedo")

    def _refresh(self):
        doc = self.w.doc
        text = doc.albedo.describe() if doc.albedo is not None else "No colour: faces show a neutral albedo"
        if doc.fit is not None and doc.albedo is None and doc.color_mode == "albedo":
            text += " (the fitted scan had no colour)"
        self.w.appearance_panel.show_state(text, doc.color_mode == "albedo")
