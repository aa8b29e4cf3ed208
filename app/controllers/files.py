"""Files controller: open anything (checkpoint, preset, scan), recent files, presets, export of
meshes and rigs, screenshots."""

from __future__ import annotations

from pathlib import Path

from PyQt6.QtCore import QObject
from PyQt6.QtWidgets import QFileDialog, QMessageBox

from app.workers import describe
from imface.errors import UserError
from imface.jobs import Progress
from imface.session import Session

MAX_RECENT = 8
EXPORT_FILTER = "OBJ, mm (*.obj);;PLY, mm (*.ply);;STL, mm (*.stl);;GLB, metres (*.glb)"


def load_job(path: str):
    yield Progress("Loading checkpoint", message=Path(path).name)
    return Session.load(path)


def export_job(session: Session, mesh, path: str, colors):
    yield Progress("Exporting", message=Path(path).name)
    return session.export_mesh(mesh, path, colors)


class FilesController(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.w = window
        export, training = window.export_panel, window.train_panel
        export.meshRequested.connect(self.export_mesh_dialog)
        export.rigRequested.connect(self.export_rig_dialog)
        export.screenshotRequested.connect(self.screenshot_dialog)
        training.loadRequested.connect(self.load_checkpoint)
        training.error.connect(lambda m: window.show_error("Training", m))

    def open_file(self, path: str):
        """Any file: a checkpoint, a colour (NAME.albedo.safetensors), a preset, or a scan."""
        suffix = Path(path).suffix.lower()
        if Path(path).name.lower().endswith(".albedo.safetensors"):
            self.w.appearance.load(path)
        elif suffix == ".safetensors":
            self.load_checkpoint(path)
        elif suffix == ".json":
            self.load_preset(path)
        else:
            self.w.fit.open_scan(path)

    # -- recent files ---------------------------------------------------------------------------------
    def add_recent(self, path: str):
        items = [p for p in self.recent_files() if p != path]
        items.insert(0, str(path))
        self.w.settings.setValue("recent", items[:MAX_RECENT])
        self.rebuild_recent()

    def recent_files(self) -> list[str]:
        v = self.w.settings.value("recent", []) or []
        return [v] if isinstance(v, str) else list(v)

    def rebuild_recent(self):
        menu = self.w.recent_menu
        menu.clear()
        files = self.recent_files()
        for p in files:
            a = menu.addAction(p)
            a.triggered.connect(lambda _c=False, p=p: self.open_file(p))
        menu.setEnabled(bool(files))

    # -- checkpoints ------------------------------------------------------------------------------------
    def open_checkpoint_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self.w, "Open checkpoint", "", "Checkpoints (*.safetensors)")
        if path:
            self.load_checkpoint(path)

    def load_checkpoint(self, path: str):
        w = self.w

        def done(session: Session):
            self.add_recent(str(path))
            w.pipeline.set_session(session)
            w.doc.set_face_model(session)
            w.set_status(f"Model {session.label} loaded")

        w.run_job(
            "Loading checkpoint",
            load_job(str(path)),
            done,
            on_failed=lambda exc: w.show_error("Cannot load checkpoint", describe(exc)),
        )

    # -- presets ------------------------------------------------------------------------------------------
    def save_preset_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self.w, "Save preset", "face.json", "Presets (*.json)")
        if path:
            self.save_preset(path)

    def save_preset(self, path: str):
        try:
            self.w.doc.save_preset(path)
        except OSError as exc:
            self.w.show_error("Save preset", f"{path}: {exc}")
            return
        self.w.doc.undo_stack.setClean()
        self.add_recent(path)
        self.w.set_status(f"Preset saved to {path}")

    def load_preset_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self.w, "Load preset", "", "Presets (*.json)")
        if path:
            self.load_preset(path)

    def load_preset(self, path: str, ask=None) -> bool:
        w = self.w
        try:
            codes, same = w.doc.read_preset(path)
        except UserError as exc:
            w.show_error("Cannot load preset", str(exc))
            return False
        if not same and not (ask or self._ask_other_model)():
            return False
        w.doc.load_preset_codes(codes, Path(path).stem)
        self.add_recent(path)
        return True

    def _ask_other_model(self) -> bool:
        answer = QMessageBox.question(
            self.w,
            "Preset from another model",
            "This preset was saved with a different checkpoint: the same codes will give a "
            "different face. Load it anyway?",
        )
        return answer == QMessageBox.StandardButton.Yes

    # -- export ---------------------------------------------------------------------------------------------
    def export_mesh_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self.w, "Export mesh", "face.obj", EXPORT_FILTER)
        if path:
            self.export_mesh(path)

    def export_mesh(self, path: str):
        w, doc = self.w, self.w.doc
        if doc.mesh is None:
            w.show_error("Export", "there is no face mesh to export yet")
            return
        w.run_job(
            "Exporting",
            export_job(doc.face_model, doc.mesh, path, doc.face_colors),
            lambda note: (w.set_status(note), w.export_panel.info.setText(note)),
            on_failed=lambda exc: w.show_error("Export failed", describe(exc)),
        )

    def export_rig_dialog(self):
        folder = QFileDialog.getExistingDirectory(self.w, "Folder for the expression rig")
        if folder:
            self.export_rig(folder)

    def export_rig(self, folder: str):
        w, doc = self.w, self.w.doc
        w.run_job(
            "Exporting rig",
            doc.face_model.export_rig_job(
                doc.codes.copy(), folder, albedo=doc.albedo if doc.color_mode == "albedo" else None
            ),
            lambda note: (w.set_status(note), w.export_panel.info.setText(note)),
            on_failed=lambda exc: w.show_error("Rig export", describe(exc)),
        )

    def screenshot_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self.w, "Save screenshot", "screenshot.png", "PNG (*.png)")
        if path:
            self.save_screenshot(path)

    def save_screenshot(self, path: str):
        try:
            self.w.viewport.screenshot(path)
        except Exception as exc:  # noqa: BLE001 - no GL context, disk full: one line
            self.w.show_error("Screenshot", f"cannot save the screenshot ({exc})")
            return
        self.w.set_status(f"Screenshot saved to {path}")

    def about(self):
        fm = self.w.doc.face_model
        where = str(fm.path) if fm.path else "none (random initialisation)"
        QMessageBox.information(
            self.w,
            "ImFace editor",
            f"Model: {fm.label}\nCheckpoint: {where}\nSHA-256: {fm.sha256}\n"
            f"Codes: identity {fm.id_dim}, expression {fm.exp_dim}; "
            f"{len(fm.expression_codes)} FaceScape expressions",
        )
