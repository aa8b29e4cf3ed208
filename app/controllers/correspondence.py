"""Correspondence controller (beside the Correspondence panel): paint the face in template space,
show face B beside it, match a picked vertex on the other face. Template coordinates come from the
network, so they are computed in jobs, never on the GUI thread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PyQt6.QtCore import QObject
from PyQt6.QtWidgets import QFileDialog

from imface.extract import Mesh
from imface.jobs import Progress
from imface.session import FaceCodes, Session, match_vertex, paint_colors

OTHER_OFFSET = np.array([2.2, 0.0, 0.0], np.float32)  # face B beside the current face (model units)


def template_job(session: Session, codes: FaceCodes, mesh: Mesh, mode: str, image, albedo=None):
    """Template coordinates of a mesh and (unless shaded) its painted colours."""
    yield Progress("Template coordinates")
    template = session.template_coordinates(codes, mesh.vertices)
    colors = None if mode == "shaded" else paint_colors(template, mode, image, albedo)
    return template, colors


def face_b_job(session: Session, codes: FaceCodes, mode: str, image, albedo=None):
    yield Progress("Face B", 0, 2, "extracting")
    mesh = session.extract(codes)
    template, colors = yield from template_job(session, codes, mesh, mode, image, albedo)
    return mesh, template, colors


class CorrespondenceController(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.w = window
        self.templates: dict[str, tuple[int, np.ndarray]] = {}  # name -> (id of faces, template)
        self._serial = 0
        panel, doc = window.corr_panel, window.doc
        panel.modeRequested.connect(self.choose_color_mode)
        panel.compareToggled.connect(self.set_compare)
        panel.pickToggled.connect(window.viewport.enable_picking)
        doc.colorModeChanged.connect(self._color_mode_changed)
        doc.modelChanged.connect(self._model_changed)

    def _model_changed(self):
        self.templates.clear()
        self.w.corr_panel.compare.setChecked(False)

    def template(self, name: str, mesh: Mesh | None) -> np.ndarray | None:
        cached = self.templates.get(name)
        if mesh is None or cached is None or cached[0] != id(mesh.faces):
            return None
        return cached[1]

    # -- colours --------------------------------------------------------------------------------
    def choose_color_mode(self, mode: str):
        image = None
        if mode == "image":
            path, _ = QFileDialog.getOpenFileName(
                self.w, "Texture image", "", "Images (*.png *.jpg *.jpeg *.bmp)"
            )
            image = self.read_image(path) if path else None
            if image is None:
                self.w.corr_panel.show_mode(self.w.doc.color_mode)
                return
        self.w.doc.set_color_mode(mode, image)

    def read_image(self, path: str) -> np.ndarray | None:
        from PyQt6.QtGui import QImage

        img = QImage(path)
        if img.isNull():
            self.w.show_error("Texture", f"{Path(path).name}: not an image that can be read")
            return None
        img = img.convertToFormat(QImage.Format.Format_RGB888)
        w, h = img.width(), img.height()
        ptr = img.constBits()
        ptr.setsize(img.sizeInBytes())
        return np.frombuffer(ptr, np.uint8).reshape(h, img.bytesPerLine())[:, : w * 3].reshape(h, w, 3).copy()

    def _color_mode_changed(self):
        self.w.corr_panel.show_mode(self.w.doc.color_mode)
        self.recolor_face()
        if "other" in self.w.viewport.data:
            self.show_other()

    def recolor_face(self):
        w = self.w
        doc = w.doc
        mesh, mode = doc.mesh, doc.color_mode
        self._serial += 1
        if mesh is None:
            return
        if mode == "shaded":
            doc.face_colors = None
            w.viewport.set_mesh("face", mesh)
            w.viewport.set_visible("face", w.view_mode == "face")
            w.schedule_render()
            return
        serial, key = self._serial, id(mesh.faces)
        template = self.template("face", mesh)
        codes, image, albedo = doc.codes.copy(), doc.texture_image, doc.albedo

        def job():
            if template is None:
                return (yield from template_job(doc.face_model, codes, mesh, mode, image, albedo))
            yield Progress("Painting")
            return template, paint_colors(template, mode, image, albedo)

        def done(result):
            tmpl, colors = result
            current = doc.mesh
            if serial != self._serial or current is None or id(current.faces) != key:
                return  # a newer colouring or a new topology came meanwhile
            self.templates["face"] = (key, tmpl)
            doc.face_colors = colors
            w.viewport.set_mesh("face", current, colors=colors)
            w.viewport.set_visible("face", w.view_mode == "face")
            w.schedule_render()

        w.run_job("Painting", job(), done)

    # -- face B and matching --------------------------------------------------------------------------
    def set_compare(self, on: bool):
        w = self.w
        if not on:
            for n in ("other", "other_marks", "face_marks"):
                w.viewport.remove(n)
            w.schedule_render()
            return
        if w.doc.slots.get("B") is None:
            w.show_error("Correspondence", "store a face as B first (Morph panel: Store as B)")
            w.corr_panel.compare.setChecked(False)
            return
        self.show_other()

    def show_other(self):
        w, doc = self.w, self.w.doc

        def done(result):
            mesh, template, colors = result
            if not w.corr_panel.compare.isChecked():
                return
            self.templates["other"] = (id(mesh.faces), template)
            w.viewport.set_mesh("other", mesh, colors=colors, offset=OTHER_OFFSET)
            w.viewport.set_visible("other", w.view_mode == "face")
            w.viewport.reset_camera()
            w.schedule_render()

        job = face_b_job(doc.face_model, doc.slots["B"], doc.color_mode, doc.texture_image, doc.albedo)
        w.run_job("Face B", job, done)

    def on_picked(self, name: str, index: int):
        if name in ("face", "other") and "other" in self.w.viewport.data:
            self.match(name, index)

    def match(self, name: str, index: int):
        """Show the vertex of the other face that corresponds to vertex `index` of `name`; the
        current face's template coordinates are computed first when they are not known yet."""
        w, doc = self.w, self.w.doc
        face_t = self.template("face", doc.mesh)
        if face_t is None and doc.mesh is not None:
            mesh = doc.mesh

            def done(result):
                self.templates["face"] = (id(mesh.faces), result[0])
                self.match(name, index)

            w.run_job(
                "Template coordinates",
                template_job(doc.face_model, doc.codes.copy(), mesh, "shaded", None),
                done,
            )
            return None
        other_t = self.templates.get("other", (None, None))[1]
        if face_t is None or other_t is None:
            w.set_status("Correspondence: face B is still being computed")
            return None
        other = "other" if name == "face" else "face"
        src, dst = (face_t, other_t) if name == "face" else (other_t, face_t)
        j = match_vertex(src, index, dst)
        vp = w.viewport
        p_src = vp.data[name].vertices[index] + vp.offsets[name]
        p_dst = vp.data[other].vertices[j] + vp.offsets[other]
        vp.set_markers(f"{name}_marks", p_src[None], color="yellow")
        vp.set_markers(f"{other}_marks", p_dst[None], color="magenta")
        w.set_status(f"Vertex {index} of {name} matches vertex {j} of {other}")
        w.schedule_render()
        return j
