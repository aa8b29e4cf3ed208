"""The Appearance panel under QT_QPA_PLATFORM=offscreen with the tiny real model: a coloured scan
loaded from the panel is fitted, its colour shown on the face, kept through a slider drag and the
re-extraction after it, exported, and undone with the fit in one step."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

pytest.importorskip("PyQt6")

import trimesh
from PyQt6.QtWidgets import QFileDialog

from tests.test_app_window import settle, window  # noqa: F401 - the window fixture


@pytest.fixture(scope="module")
def coloured_scan(tmp_path_factory, face_session):
    """The tiny model's mean face in mm, left half red and right half blue (by template x), with
    its 5 landmarks (mm)."""
    from imface.scan.template import template

    s = face_session
    codes = s.mean_codes()
    mesh = s.extract(codes, 64)
    left = s.template_coordinates(codes, mesh.vertices)[:, 0] > 0
    rgb = np.where(left[:, None], [220, 40, 40, 255], [40, 60, 220, 255]).astype(np.uint8)
    scan = trimesh.Trimesh(mesh.vertices * 100.0, mesh.faces, process=False)
    scan.visual.vertex_colors = rgb
    path = tmp_path_factory.mktemp("scan") / "coloured.ply"
    scan.export(path)
    return path, template().landmarks5 * 100.0


def test_coloured_scan_from_the_panel_is_shown_in_its_colours_through_a_drag(
    window,  # noqa: F811 - the fixture imported above
    qtbot,
    coloured_scan,
    monkeypatch,
    tmp_path,
):
    w = window()
    path, landmarks = coloured_scan
    w.fit.auto_fit = False  # the tiny model's plain face needs its landmarks
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    w.appearance_panel.load_scan.click()
    qtbot.waitUntil(lambda: w.doc.scan is not None, timeout=30000)
    assert w.doc.scan.scan.colours is not None
    w.fit.start_fit([np.asarray(p) for p in landmarks])
    qtbot.waitUntil(lambda: w.doc.fit is not None, timeout=120000)
    assert w.doc.albedo is not None and w.doc.color_mode == "albedo" and w.view_mode == "face"
    assert w.appearance_panel.show_colour.isChecked()
    assert "colour samples from coloured.ply" in w.appearance_panel.info.text()
    settle(w, qtbot)
    qtbot.waitUntil(lambda: w.viewport.colors.get("face") is not None, timeout=30000)
    face = w.viewport.data["face"]
    colours = w.viewport.colors["face"]
    assert colours.shape == (len(face.vertices), 3)
    red = colours[:, 0].astype(int) - colours[:, 2]
    assert (red > 100).mean() > 0.2 and (red < -100).mean() > 0.2  # both halves in their colours
    # a slider drag: the morph moves the coloured mesh; the release re-extracts and repaints
    moved = []
    w.pipeline.morphed.connect(lambda *a: moved.append(w.viewport.colors.get("face") is not None))
    slider = w.morph_panel.exp_sliders.sliders[0]
    slider.setSliderDown(True)
    for v in range(0, 201, 40):
        slider.setValue(v)
        qtbot.wait(50)
    qtbot.waitUntil(lambda: bool(moved), timeout=30000)  # the coloured mesh was morphed
    slider.setSliderDown(False)
    settle(w, qtbot)
    qtbot.waitUntil(lambda: w.viewport.colors.get("face") is not None and not w.jobs.busy, timeout=30000)
    assert all(moved)
    after = w.viewport.colors["face"]
    assert after.shape == (len(w.viewport.data["face"].vertices), 3)
    red = after[:, 0].astype(int) - after[:, 2]
    assert (red > 100).mean() > 0.2 and (red < -100).mean() > 0.2
    w.files.export_mesh(str(tmp_path / "face.ply"))
    qtbot.waitUntil((tmp_path / "face.ply.json").exists, timeout=20000)
    exported = trimesh.load(tmp_path / "face.ply", process=False)
    assert np.array_equal(exported.visual.vertex_colors[:, :3], w.doc.face_colors)
    # plain shading and back, then undo the colour with the fit and the drag
    w.appearance_panel.show_colour.click()
    assert w.doc.color_mode == "shaded" and w.doc.albedo is not None
    w.doc.undo_stack.undo()
    assert w.doc.color_mode == "albedo"
    w.doc.undo_stack.undo()  # the drag
    w.doc.undo_stack.undo()  # the fit and its colour, one step
    assert w.doc.fit is None and w.doc.albedo is None and w.doc.color_mode == "shaded"
    assert "No colour" in w.appearance_panel.info.text()
