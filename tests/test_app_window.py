"""The main window's logic under QT_QPA_PLATFORM=offscreen (no 3D view), driving the real library
facade (imface.session) with a tiny real model: drags and undo, drops, fits, bad input, cancel,
close confirmation, export units, correspondence, training process."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json
import stat
import threading
import time

import numpy as np
import pytest

pytest.importorskip("PyQt6")

from PyQt6.QtCore import QMimeData, QPointF, QSettings, Qt, QUrl
from PyQt6.QtGui import QDropEvent

from app.training_process import TrainingProcess
from app.window import MainWindow
from imface.config import FitConfig
from imface.extract.repair import MAX_EDGE, MORPH_RADIUS, check_mesh, visible_part
from imface.jobs import Progress

QUICK_FIT = FitConfig(iterations=6, points_per_step=1024)


@pytest.fixture
def window(qtbot, tmp_path, face_session):
    made = []

    def make(session=None):
        w = MainWindow(
            session or face_session,
            use_3d=False,
            settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat),
        )
        w.quiet = True
        w.confirm_close = lambda: True
        w.fit.config = QUICK_FIT
        qtbot.addWidget(w)
        w.show()
        qtbot.waitUntil(lambda: w.mesh_stage == "fine", timeout=60000)
        made.append(w)
        return w

    yield make
    for w in made:
        w.confirm_close = lambda: True
        w.close()


def settle(w, qtbot, timeout=60000):
    qtbot.waitUntil(lambda: not w.pipeline.pending and not w.jobs.busy, timeout=timeout)


def drag(w, qtbot, slider, stop: int, seen: list):
    """Drag a slider from 0 to `stop` in steps, wait for the first face shown (`seen` fills),
    release it and wait for the fine mesh."""
    slider.setSliderDown(True)
    for v in range(0, stop + 1, 30):
        slider.setValue(v)
        qtbot.wait(50)
    qtbot.waitUntil(lambda: bool(seen), timeout=30000)
    slider.setSliderDown(False)
    settle(w, qtbot)


def drop(widget, path):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(
        QPointF(10, 10),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    widget.dropEvent(event)
    return event


@pytest.fixture(scope="module")
def face_scan(tmp_path_factory, face_session):
    """The tiny model's own mean face as a scan in millimetres, and its 5 landmarks (mm)."""
    import trimesh

    from imface.scan.template import template

    mesh = face_session.extract(face_session.mean_codes(), 64)
    path = tmp_path_factory.mktemp("scan") / "face.obj"
    trimesh.Trimesh(mesh.vertices * 100.0, mesh.faces, process=False).export(path)
    return path, template().landmarks5 * 100.0


def test_slider_drag_is_one_undo_step_and_never_tears(window, qtbot):
    w = window()
    slider = w.morph_panel.id_sliders.sliders[0]
    settle(w, qtbot)  # the morph base is ready
    before, shown = w.doc.codes.copy(), []

    def look(vertices, _normals, _codes, frame):  # runs after the window took the frame
        if frame.sound and len(vertices) == len(w.doc.mesh.vertices):
            drawn = visible_part(vertices, w.doc.mesh.faces, frame.hidden)
            shown.append(check_mesh(*drawn, MAX_EDGE, MORPH_RADIUS).sound)

    w.pipeline.morphed.connect(look)
    w.pipeline.meshReady.connect(
        lambda m, *_: shown.append(check_mesh(m.vertices, m.faces, MAX_EDGE, MORPH_RADIUS).sound)
    )
    drag(w, qtbot, slider, 300, shown)
    assert w.doc.undo_stack.count() == 1 and w.mesh_stage == "fine"
    assert all(shown), "every face shown during the drag and after it is sound"
    assert check_mesh(w.doc.mesh.vertices, w.doc.mesh.faces, MAX_EDGE, MORPH_RADIUS).sound
    assert "(fine)" in w.status_label.text()
    w.undo_action.trigger()
    assert w.doc.codes.equals(before) and slider.value() == 0
    w.redo_action.trigger()
    assert w.doc.sliders("id")[0] == pytest.approx(3.0, abs=1e-3)


def test_undo_redo_shortcuts(window, qtbot):
    w = window()
    keys = {a.shortcuts()[0].toString() for a in (w.undo_action, w.redo_action)}
    assert keys == {"Ctrl+Z", "Ctrl+Shift+Z"}
    assert "Ctrl+Y" in [s.toString() for s in w.redo_action.shortcuts()]
    assert (
        w.undo_action in w.actions() and w.undo_action.shortcutContext() == Qt.ShortcutContext.WindowShortcut
    )


def test_every_edit_is_undoable_and_reset_resets_the_expression_box(window, qtbot, tmp_path):
    w = window()
    doc, panel = w.doc, w.morph_panel
    start = doc.codes.copy()
    panel.random_face()
    doc.mean_face()
    panel.expr.setCurrentText("2_smile")
    panel._apply_expression()
    doc.store_slot("A")
    doc.set_slider("id", 0, 1.0)
    doc.store_slot("B")
    doc.interpolate(0.5)
    doc.save_preset(tmp_path / "p.json")
    w.files.load_preset(str(tmp_path / "p.json"))
    panel.reset_face()
    assert panel.expr.currentText() == "1_neutral" and panel.blend.value() == 100
    assert doc.codes.equals(doc.face_model.mean_codes())
    while doc.undo_stack.canUndo():
        doc.undo_stack.undo()
    assert doc.codes.equals(start)


def test_drop_a_ball_is_an_alignment_failure(window, qtbot, tmp_path):
    import trimesh

    w = window()
    codes = w.doc.codes.copy()
    path = tmp_path / "ball.ply"
    trimesh.creation.icosphere(subdivisions=5, radius=90.0).export(path)
    drop(w, path)
    qtbot.waitUntil(lambda: any(e.startswith("Fit failed") for e in w.errors), timeout=600000)
    assert "Pick 5 landmarks" in w.fit_panel.pick_label.text()  # decided by the exception type
    assert w.doc.codes.equals(codes) and w.doc.fit is None and w.doc.scan is not None


def test_landmark_fit_gives_per_vertex_distances_and_undoes(window, qtbot, face_scan):
    w = window()
    path, landmarks = face_scan
    w.fit.auto_fit = False
    w.fit.open_scan(str(path))
    qtbot.waitUntil(lambda: w.doc.scan is not None, timeout=30000)
    w.fit_panel.pick_btn.setChecked(True)
    assert w.fit.picking and w.view_mode == "scan"
    for point in landmarks:
        w.fit.add_landmark(point)
    assert not w.fit.picking and "5 landmarks picked" in w.fit_panel.pick_label.text()
    before = w.doc.codes.copy()
    w.fit_panel.fit_btn.click()
    qtbot.waitUntil(lambda: w.doc.fit is not None or bool(w.errors), timeout=600000)
    assert w.errors == []
    fit = w.doc.fit
    assert fit.distances_mm.shape == (len(w.doc.scan.scan.vertices),)
    assert np.median(fit.distances_mm) < 5.0  # the scan is the model's own face
    assert len(w.fit_panel.plot.points()) >= 1 and str(path) in w.files.recent_files()
    w.doc.undo_stack.undo()
    assert w.doc.fit is None and w.doc.codes.equals(before)


def _surface_gap_mm(w, codes=None, vertices=None) -> np.ndarray:
    """|SDF| of the model at a face's vertices (mm; default: the face on screen and the current
    codes): how far the face stands off the model's own surface for those codes."""
    import torch

    from imface.extract import face_sdf

    session = w.doc.face_model
    codes = w.doc.codes if codes is None else codes
    vertices = w.doc.mesh.vertices if vertices is None else vertices
    sdf = face_sdf(session.model, session.torch_codes(codes))
    return np.abs(sdf(torch.from_numpy(np.asarray(vertices, np.float32))).numpy()) * 100.0


def test_fitted_detail_stays_on_the_face_through_morphs_and_undoes(window, qtbot, face_scan, tmp_path):
    import trimesh

    w = window()
    path, landmarks = face_scan
    mesh = trimesh.load(path, process=False)
    # the scan: the model's face with a 4 mm bump on one cheek, which no code of the model has
    centre = mesh.vertices[np.argmin(np.linalg.norm(mesh.vertices - [35.0, -10.0, 60.0], axis=1))]
    bump = 4.0 * np.exp(-np.sum((mesh.vertices - centre) ** 2, axis=1) / (2 * 8.0**2))
    bumped = tmp_path / "bumped.obj"
    trimesh.Trimesh(mesh.vertices + bump[:, None] * mesh.vertex_normals, mesh.faces).export(bumped)
    w.fit.auto_fit = False
    w.fit.open_scan(str(bumped))
    qtbot.waitUntil(lambda: w.doc.scan is not None, timeout=30000)
    w.fit.landmarks = [np.asarray(p) for p in landmarks]
    w.fit.start_fit(w.fit.landmarks)
    qtbot.waitUntil(lambda: w.doc.fit is not None or bool(w.errors), timeout=600000)
    assert w.errors == [] and w.doc.detail is w.doc.fit.detail is not None
    assert w.fit_panel.detail_box.isEnabled() and w.fit_panel.detail_box.isChecked()
    settle(w, qtbot)
    assert _surface_gap_mm(w).max() > 2.0  # the bump is on the face shown
    # another expression: the live morph and the re-extracted face both keep the bump
    w.doc.set_expression(next(iter(w.doc.face_model.expression_codes)), 1.0)
    settle(w, qtbot)
    assert _surface_gap_mm(w).max() > 2.0
    frames = []  # a drag: the live morph carries the bump too
    w.pipeline.morphed.connect(lambda v, _n, codes, frame: frame.sound and frames.append((codes, v)))
    drag(w, qtbot, w.morph_panel.exp_sliders.sliders[0], 150, frames)
    assert _surface_gap_mm(w, *frames[-1]).max() > 2.0
    w.fit_panel.detail_box.setChecked(False)  # one undoable edit
    settle(w, qtbot)
    assert w.doc.detail is None and _surface_gap_mm(w).max() < 1.0
    w.doc.undo_stack.undo()
    settle(w, qtbot)
    assert w.doc.detail is w.doc.fit.detail and w.fit_panel.detail_box.isChecked()
    assert _surface_gap_mm(w).max() > 2.0


@pytest.mark.parametrize(
    "name,content", [("notes.txt", "hello"), ("broken.obj", "v 1 2\nf x y z\n"), ("empty.ply", "")]
)
def test_bad_scan_gives_one_clear_error_and_keeps_state(window, qtbot, tmp_path, name, content):
    w = window()
    w.doc.set_slider("id", 0, 1.0)
    codes, steps = w.doc.codes.copy(), w.doc.undo_stack.count()
    (tmp_path / name).write_text(content)
    drop(w, tmp_path / name)
    qtbot.waitUntil(lambda: len(w.errors) == 1, timeout=10000)
    assert w.errors[0].startswith("Cannot open scan:") and "\n" not in w.errors[0]
    assert w.doc.codes.equals(codes) and w.doc.undo_stack.count() == steps and w.doc.scan is None


def test_broken_checkpoint_keeps_session(window, qtbot, tmp_path):
    w = window()
    session = w.doc.face_model
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    drop(w, bad)
    qtbot.waitUntil(lambda: len(w.errors) == 1, timeout=10000)
    assert w.errors[0].startswith("Cannot load checkpoint:") and w.doc.face_model is session


def test_cancel_fit_leaves_the_face(window, qtbot, face_scan):
    w = window()
    w.fit.config = FitConfig(iterations=100_000, points_per_step=512)
    path, landmarks = face_scan
    w.fit.auto_fit = False
    w.fit.open_scan(str(path))
    qtbot.waitUntil(lambda: w.doc.scan is not None, timeout=30000)
    codes = w.doc.codes.copy()
    w.fit.landmarks = [np.asarray(p) for p in landmarks]
    w.fit.start_fit(w.fit.landmarks)
    qtbot.waitUntil(lambda: len(w.fit_panel.plot.points()) > 2, timeout=60000)
    t0 = time.monotonic()
    w.cancel_jobs()
    qtbot.waitUntil(lambda: not w.fit.running, timeout=20000)
    assert time.monotonic() - t0 < 10
    assert w.doc.fit is None and w.doc.codes.equals(codes) and w.errors == []


def test_job_runner_cancel_closes_the_generator(window, qtbot):
    w = window()
    cleaned = threading.Event()

    def job():
        try:
            for i in range(10_000):
                time.sleep(0.002)
                yield Progress("Counting", i, 10_000)
        finally:
            cleaned.set()

    cancelled = []
    thread = w.run_job("Counting", job(), lambda r: None, on_cancelled=lambda: cancelled.append(1))
    qtbot.waitUntil(lambda: thread.last is not None and thread.last.done > 3, timeout=5000)
    assert w.progress.isVisible() and w.cancel_btn.isVisible()
    w.cancel_btn.click()
    qtbot.waitUntil(lambda: bool(cancelled), timeout=5000)
    assert cleaned.is_set()


def test_close_asks_while_jobs_run(window, qtbot):
    w = window()
    release = threading.Event()

    def job():
        while not release.wait(0.01):
            yield Progress("Waiting")

    w.run_job("Long", job(), lambda r: None)
    asked = []
    w.confirm_close = lambda: asked.append(1) or False  # the user says "no"
    w.close()
    assert asked and w.isVisible()
    release.set()
    w.confirm_close = lambda: True


def test_export_units_and_sidecars(window, qtbot, tmp_path):
    import trimesh

    w = window()
    w.doc.set_color_mode("coords")
    qtbot.waitUntil(lambda: w.doc.face_colors is not None, timeout=20000)
    for fmt in ("obj", "ply", "stl", "glb"):
        w.files.export_mesh(str(tmp_path / f"face.{fmt}"))
        qtbot.waitUntil((tmp_path / f"face.{fmt}.json").exists, timeout=20000)
    extent = np.ptp(w.doc.mesh.vertices, axis=0).max()  # model units
    ply = trimesh.load(tmp_path / "face.ply", process=False)
    assert np.ptp(ply.vertices, axis=0).max() == pytest.approx(extent * 100, rel=1e-4)  # mm
    assert ply.visual.vertex_colors.shape[0] == ply.vertices.shape[0]
    glb = trimesh.load(tmp_path / "face.glb", force="mesh", process=False)
    assert np.ptp(glb.vertices, axis=0).max() == pytest.approx(extent * 0.1, rel=1e-4)  # metres
    units = {
        fmt: json.loads((tmp_path / f"face.{fmt}.json").read_text())["unit"] for fmt in ("obj", "stl", "glb")
    }
    assert units == {"obj": "mm", "stl": "mm", "glb": "m"}
    assert "STL" not in w.export_panel.info.text() or "colours" in w.export_panel.info.text()


def test_colours_follow_morphs_and_undo(window, qtbot):
    w = window()
    for mode in ("coords", "checker", "uv"):
        w.doc.set_color_mode(mode)
        qtbot.waitUntil(lambda: w.doc.face_colors is not None and not w.jobs.busy, timeout=20000)
    assert w.doc.face_colors.shape == (len(w.doc.mesh.vertices), 3)
    w.doc.undo_stack.undo()
    assert w.doc.color_mode == "checker"


def test_correspondence_match_same_face(window, qtbot):
    w = window()
    w.doc.store_slot("B")
    w.corr_panel.compare.setChecked(True)
    qtbot.waitUntil(lambda: "other" in w.viewport.data, timeout=30000)
    w.corr.match("face", 100)  # computes the face's template coordinates first
    qtbot.waitUntil(lambda: "other_marks" in w.viewport.data, timeout=30000)
    assert "Vertex 100 of face matches" in w.status_label.text()


def test_untrained_model_opens_with_label(qtbot, tmp_path):
    from app.main import initial_model, parse_args

    session, _warning = initial_model(parse_args(["--untrained"]))
    assert not session.trained and "UNTRAINED" in session.label
    w = MainWindow(
        session, use_3d=False, settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    )
    w.quiet = True
    qtbot.addWidget(w)
    assert "UNTRAINED" in w.windowTitle() and "Untrained" in w.morph_panel.model_label.text()
    w.close()


def test_training_process_logs_and_stops(qtbot, tmp_path):
    fake = tmp_path / "fakepython"
    fake.write_text(
        '#!/bin/sh\nfor i in 1 2 3 4 5 6 7 8 9 10; do echo "{\\"step\\": $i, \\"loss\\": 0.$i}"; '
        "echo plain text; sleep 0.05; done\nsleep 30\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    proc = TrainingProcess(python=str(fake))
    logs, states = [], []
    proc.logged.connect(logs.append)
    proc.stateChanged.connect(states.append)
    steps, run = TrainingProcess.plan("synthetic", "", 3, tmp_path, resume=False, epochs=2)
    assert [s[1][0] for s in steps] == ["synth", "prepare", "train"]
    assert "--resume" in TrainingProcess.plan("synthetic", "", 3, tmp_path, True, None)[0][-1][1]
    proc.start(steps[-1:], run)
    qtbot.waitUntil(lambda: len(logs) >= 5, timeout=10000)
    proc.stop()
    qtbot.waitUntil(lambda: "stopped" in states, timeout=10000)
    assert logs[0] == {"step": 1, "loss": 0.1} and not proc.running


def test_training_process_tails_log_jsonl(qtbot, tmp_path):
    fake = tmp_path / "fakepython"
    run = tmp_path / "run"
    fake.write_text(
        f"#!/bin/sh\nmkdir -p {run}\nfor i in 1 2 3 4; do "
        f'echo "{{\\"step\\": $i, \\"total\\": 0.$i}}" >> {run}/log.jsonl; sleep 0.1; done\n'
        f"touch {run}/state.safetensors {run}/model.safetensors\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    proc = TrainingProcess(python=str(fake))
    logs, states = [], []
    proc.logged.connect(logs.append)
    proc.stateChanged.connect(states.append)
    steps, _ = TrainingProcess.plan("synthetic", "", 3, tmp_path, resume=False, epochs=None, preset="tiny")
    assert steps[-1][1][-2:] == ["--preset", "tiny"]
    proc.start(steps[-1:], run)
    qtbot.waitUntil(lambda: "finished" in states, timeout=10000)
    assert [r["step"] for r in logs] == [1, 2, 3, 4]
    assert proc.checkpoint() == run / "model.safetensors"
