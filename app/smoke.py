"""End-to-end smoke run of the real window with a real model (needs a display, e.g. Xvfb):

    xvfb-run -a -s "-screen 0 1600x1000x24" python -m app.smoke --out OUT [--checkpoint C]
        [--scan SCAN] [--shots]

Opens the editor, drags identity and expression sliders to +3 and -3 like a user (press, move,
release), checks every face mesh shown on the way (no edge longer than the bound, no vertex outside
the sphere), checks that Ctrl+Z restores the codes from before the drag exactly, optionally fits a
scan, and saves screenshots plus OUT/smoke.json. Exit code 0 = all checks passed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SLIDER_TICKS = 300  # the sliders' end (+3 std) in ticks


def face_pixel_fraction(img: np.ndarray) -> float:
    """Share of pixels that are not the grey background (skin, texture or heat-map colours)."""
    rgb = img[..., :3].astype(np.int32)
    return float(((rgb.max(-1) - rgb.min(-1)) > 40).mean())


class TearWatch:
    """Checks every face mesh the window shows."""

    def __init__(self, window):
        from imface.extract.repair import MAX_EDGE, MORPH_RADIUS, check_mesh

        self.w, self.check = window, check_mesh
        self.bound, self.radius = MAX_EDGE, MORPH_RADIUS
        self.shown = 0
        self.torn: list[str] = []
        self.longest = 0.0
        self.farthest = 0.0
        self.hidden_faces = 0  # the most faces one live frame hid
        window.pipeline.morphed.connect(
            lambda v, _n, _c, frame: frame.sound and self.look(v, hidden=frame.hidden)
        )
        window.pipeline.meshReady.connect(lambda mesh, _n, _c, _s: self.look(mesh.vertices, mesh.faces))

    def look(self, vertices, faces=None, hidden=None):
        """Check what is drawn: the faces a live morph hides (stretched over a lip parting until the
        re-mesh) are not on screen."""
        from imface.extract.repair import visible_part

        faces = self.w.doc.mesh.faces if faces is None else faces
        if len(faces) == 0 or faces.max() >= len(vertices):
            return
        self.hidden_faces = max(self.hidden_faces, 0 if hidden is None else int(hidden.sum()))
        result = self.check(*visible_part(vertices, faces, hidden), self.bound, self.radius)
        self.shown += 1
        self.longest = max(self.longest, result.longest_edge)
        self.farthest = max(self.farthest, result.farthest_vertex)
        if not result.sound:
            self.torn.append(result.reason)


def drag(window, slider, target: int, steps: int = 15, dwell: float = 0.08):
    """Press, move to `target` in steps (the event loop runs between them), release."""
    from app.workers import wait_for

    slider.setSliderDown(True)
    start = slider.value()
    for k in range(1, steps + 1):
        slider.setValue(int(round(start + (target - start) * k / steps)))
        wait_for(lambda: False, dwell)
    slider.setSliderDown(False)


def settle(window, timeout: float = 600) -> bool:
    """Until no mesh request and no job is left, the face on screen is the fine mesh and the
    progress bar has taken the pipeline's last word (it arrives just after the pipeline idles)."""
    from app.workers import wait_for

    w = window
    return wait_for(
        lambda: (
            not w.pipeline.pending
            and not w.jobs.busy
            and w.mesh_stage == "fine"
            and not w.progress.isVisible()
        ),
        timeout,
    )


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.smoke")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", help="model checkpoint (default: the shipped model)")
    p.add_argument("--scan", help="a scan to drop on the window and fit")
    p.add_argument("--shots", action="store_true", help="also save one screenshot per panel")
    p.add_argument("--fit-iterations", type=int, help="fit iterations (default: the library's)")
    p.add_argument("--train-log", help="a RUN/log.jsonl to show in the training panel screenshot")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from PyQt6.QtCore import QSettings, Qt
    from PyQt6.QtTest import QTest
    from PyQt6.QtWidgets import QApplication

    qt_app = QApplication.instance() or QApplication(sys.argv[:1])  # noqa: F841 - kept alive
    from app.window import MainWindow
    from app.workers import wait_for
    from imface.session import DEFAULT_CHECKPOINT, Session

    session = Session.load(args.checkpoint or DEFAULT_CHECKPOINT)
    w = MainWindow(session, settings=QSettings(str(out / "settings.ini"), QSettings.Format.IniFormat))
    w.quiet = True
    w.resize(1280, 800)
    w.show()
    w.activateWindow()  # shortcuts (Ctrl+Z) go to the active window
    watch = TearWatch(w)
    result: dict = {"checkpoint": str(session.path)}
    result["first_face"] = wait_for(lambda: w.mesh_stage == "fine", 120)
    undo_exact = []
    w.morph_panel.expr.setCurrentText("3_mouth_stretch")
    w.morph_panel._apply_expression()
    settle(w)
    sliders = [
        w.morph_panel.id_sliders.sliders[0],
        w.morph_panel.id_sliders.sliders[1],
        w.morph_panel.exp_sliders.sliders[0],
        w.morph_panel.exp_sliders.sliders[1],
    ]
    for slider in sliders:
        for target in (SLIDER_TICKS, -SLIDER_TICKS):
            if slider.value() == target:  # already at the end (a code beyond +-3): nothing to drag
                continue
            before = w.doc.codes.copy()
            steps = w.doc.undo_stack.count()
            drag(w, slider, target)
            settle(w)
            one_step = w.doc.undo_stack.count() == steps + 1
            QTest.keyClick(w, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
            undone = w.doc.codes.equals(before)
            undo_exact.append(one_step and undone)
            if not (one_step and undone):
                steps_made = w.doc.undo_stack.count() - steps
                problem = {"slider": slider.objectName(), "to": target, "steps": steps_made, "undone": undone}
                result.setdefault("undo_problems", []).append(problem)
            QTest.keyClick(w, Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier)  # redo: keep going
            settle(w)
    result["drags"] = len(undo_exact)
    result["undo_restores_codes_exactly"] = all(undo_exact)
    result["meshes_checked"] = watch.shown
    result["torn_meshes"] = watch.torn
    result["longest_edge_mm"] = round(watch.longest * 100, 2)
    result["most_hidden_faces"] = watch.hidden_faces
    result["farthest_vertex_units"] = round(watch.farthest, 3)
    result["edge_bound_mm"] = watch.bound * 100
    result["sphere_radius_units"] = watch.radius
    img = w.viewport.screenshot(str(out / "face.png"))
    result["face_pixels"] = face_pixel_fraction(img)
    if args.shots:
        shoot_panels(w, out, args.train_log)
    scan = Path(args.scan).resolve() if args.scan else None
    if scan is None and args.shots:
        scan = held_out_scan(session, out / "held_out_smile_m.ply")
    if scan is not None:
        from imface.config import FitConfig

        w.fit.config = FitConfig(iterations=args.fit_iterations) if args.fit_iterations else FitConfig()
        w.files.open_file(str(scan))
        result["fit_done"] = (
            wait_for(lambda: w.doc.fit is not None or bool(w.errors), 600) and w.doc.fit is not None
        )
        settle(w)
        w.grab().save(str(out / "fit.png"))
    w.grab().save(str(out / "window.png"))
    result["errors"] = list(w.errors)
    w.close()
    checks = [result["first_face"], result["undo_restores_codes_exactly"], not watch.torn, watch.shown > 0]
    checks += [result["face_pixels"] > 0.02, not result["errors"], result.get("fit_done", True)]
    result["passed"] = all(checks)
    (out / "smoke.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0 if result["passed"] else 1


def held_out_scan(session, path: Path) -> Path:
    """A face the model was not shown as such: a random identity smiling, written in metres in a
    random pose (what a user's scan from another tool looks like)."""
    import trimesh
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(7)
    codes = session.mean_codes()
    codes.z_id = session.id_space.sample(rng, 0.8)
    codes.z_exp, codes.neutral = session.expression_codes["2_smile"].copy(), False
    mesh = session.extract(codes, 128)
    rotation = Rotation.from_euler("xyz", rng.uniform(-40, 40, 3), degrees=True).as_matrix()
    vertices = mesh.vertices @ rotation.T * 0.1 + rng.uniform(-0.5, 0.5, 3)  # metres
    trimesh.Trimesh(vertices, mesh.faces, process=False).export(path)
    return path


def shoot_panels(w, out: Path, train_log: str | None = None):
    """One PNG of the window per panel (for the README)."""
    doc = w.doc
    doc.store_slot("A")
    doc.set_slider("id", 1, -1.5)
    doc.store_slot("B")
    doc.set_expression("2_smile", 1.0)
    settle(w)
    w.docks["Fit"].raise_()
    w.grab().save(str(out / "morph.png"))
    w.docks["Correspondence"].raise_()
    doc.set_color_mode("checker")
    w.corr_panel.compare.setChecked(True)
    settle(w)
    w.corr.match("face", len(doc.mesh.vertices) // 2)
    settle(w)
    w.grab().save(str(out / "correspondence.png"))
    w.corr_panel.compare.setChecked(False)
    doc.set_color_mode("coords")
    if train_log:  # the training panel shows a real run's log, or no picture is made
        w.docks["Training"].raise_()
        w.train_panel.log.appendPlainText(
            f"$ python -m imface train --corpus cache --out {Path(train_log).parent}"
        )
        for line in Path(train_log).read_text().splitlines():
            w.train_panel._logged(json.loads(line))
        w.train_panel.log.appendPlainText(f"{len(w.train_panel.plot.points())} logged steps")
        settle(w)
        w.grab().save(str(out / "training.png"))
    w.docks["Export"].raise_()
    w.files.export_mesh(str(out / "face.glb"))
    settle(w)
    w.grab().save(str(out / "export.png"))
    doc.set_color_mode("shaded")
    w.docks["Fit"].raise_()
    settle(w)


if __name__ == "__main__":
    sys.exit(run())
