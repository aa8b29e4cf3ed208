"""End-to-end smoke run of the real window (needs a display, e.g. under Xvfb):

    xvfb-run -a -s "-screen 0 1600x1000x24" python -m app.smoke --out OUT [--fake | --checkpoint C]
        [--shots] [--train-log RUN/log.jsonl] [--scan SCAN]

Opens the editor, moves an identity slider (live morph, then refine), drops a synthetic scan on the
window, waits for the fit, measures event-loop latency while the fit runs, and saves screenshots
(viewport and whole window) plus OUT/smoke.json with the numbers. Exit code 0 = all checks passed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def face_pixel_fraction(img: np.ndarray) -> float:
    """Share of pixels that are not the grey background (skin, texture or heat-map colours)."""
    rgb = img[..., :3].astype(np.int32)
    spread = rgb.max(-1) - rgb.min(-1)
    return float((spread > 40).mean())


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--fake", action="store_true", help="use the analytic test double (fast, no torch model)")
    p.add_argument("--checkpoint")
    p.add_argument("--shots", action="store_true", help="also save one screenshot per panel")
    p.add_argument("--train-log", help="a RUN/log.jsonl to show in the training panel screenshot")
    p.add_argument("--scan", help="the scan to drop (default: a generated face-like height field)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from PyQt6.QtCore import QMimeData, QPointF, QSettings, Qt, QUrl
    from PyQt6.QtGui import QDropEvent
    from PyQt6.QtTest import QTest
    from PyQt6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    from app import backend
    from app.latency import LatencyProbe, warm_up
    from app.testing import fake_face_model, synthetic_scan
    from app.window import MainWindow

    warm_up()
    if args.fake:
        fm = fake_face_model(fit_steps=150, fit_sleep=0.02)
    elif args.checkpoint:
        backend.quality = "draft"
        fm = backend.load_model(args.checkpoint)
    else:
        fm = backend.untrained_model()
    settings = QSettings(str(out / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(fm, use_3d=True, settings=settings)
    w.quiet = True
    w.resize(1280, 800)
    w.show()
    result: dict = {"errors": []}

    def pump(cond, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not cond():
            QTest.qWait(10)  # a real event loop (timers fire), like the user's session
        return cond()

    ok = pump(lambda: w.doc.mesh is not None and "fine" in w.status_label.text(), 120)
    pump(lambda: False, 0.5)
    result["first_mesh"] = ok
    # move a slider like a user: press, drag, release
    s = w.morph_panel.id_sliders.sliders[0]
    v0 = w.doc.mesh.vertices.copy() if w.doc.mesh is not None else None
    s.setSliderDown(True)
    for v in range(0, 160, 20):
        s.setValue(v)
        pump(lambda: False, 0.05)
    s.setSliderDown(False)
    pump(lambda: False, 1.0)
    pump(lambda: not w.pipeline._box._has and w.jobs.jobs == [], 60)
    result["undo_steps_after_drag"] = w.doc.undo_stack.count()
    result["mesh_changed"] = bool(
        v0 is not None
        and w.doc.mesh is not None
        and (w.doc.mesh.vertices.shape != v0.shape or np.abs(w.doc.mesh.vertices - v0).max() > 1e-4)
    )
    img = w.viewport.screenshot(str(out / "face.png"))
    result["face_pixels"] = face_pixel_fraction(img)
    if args.shots:
        shoot_panels(w, app, out, pump, args.train_log)

    # drop a synthetic scan; measure latency while it is fitted
    scan = Path(args.scan).resolve() if args.scan else synthetic_scan(out / "scan.obj")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(scan))])
    probe = LatencyProbe()
    w.dropEvent(
        QDropEvent(
            QPointF(200, 200),
            Qt.DropAction.CopyAction,
            mime,
            Qt.MouseButton.LeftButton,
            Qt.KeyboardModifier.NoModifier,
        )
    )
    pump(lambda: w.fit_job is not None or w.errors, 60)
    probe.start()  # from the start of the fit to its end
    fitted = pump(lambda: w.doc.fit is not None or any(e.startswith("Fit failed") for e in w.errors), 300)
    probe.stop()
    result["fit_done"] = w.doc.fit is not None
    result["latency_max_ms"] = round(probe.max_gap_ms, 1)
    result["latency_p99_ms"] = round(probe.percentile(99), 1)
    result["latency_ticks"] = probe.ticks
    pump(lambda: False, 0.5)
    img = w.viewport.screenshot(str(out / "fit.png"))
    result["fit_pixels"] = face_pixel_fraction(img)
    w.grab().save(str(out / "window.png"))
    result["errors"] = list(w.errors)
    del fitted
    w.confirm_close = lambda: True
    w.close()
    checks = [
        result["first_mesh"],
        result["mesh_changed"],
        result["undo_steps_after_drag"] == 1,
        result["face_pixels"] > 0.02,
        result["fit_done"],
        result["fit_pixels"] > 0.02,
    ]
    result["passed"] = all(checks)
    (out / "smoke.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0 if result["passed"] else 1


def shoot_panels(w, app, out: Path, pump, train_log: str | None = None):
    """One PNG of the window per panel (for the README)."""

    def settle():
        pump(lambda: not w.pipeline._box._has and not w.jobs.busy, 60)
        pump(lambda: False, 0.4)
        w.viewport.render()

    w.doc.store_slot("A")
    w.doc.set_slider("id", 1, -1.5)
    w.doc.store_slot("B")
    w.doc.set_expression("2_smile", 1.0) if "2_smile" in w.doc.face_model.expression_codes else None
    settle()
    w.docks["Fit"].raise_()
    w.grab().save(str(out / "panel_morph.png"))
    w.docks["Correspondence"].raise_()
    w.doc.set_color_mode("checker")
    w.corr_panel.compare.setChecked(True)
    settle()
    w.match("face", len(w.doc.mesh.vertices) // 2)
    settle()
    w.grab().save(str(out / "panel_correspondence.png"))
    w.corr_panel.compare.setChecked(False)
    w.doc.set_color_mode("coords")
    w.docks["Training"].raise_()
    if train_log:
        w.train_panel.log.appendPlainText(
            f"$ python -m imface train --corpus cache --out {Path(train_log).parent}"
        )
        for line in Path(train_log).read_text().splitlines():
            w.train_panel._logged(json.loads(line))
        w.train_panel.log.appendPlainText(f"{len(w.train_panel.plot.points())} logged steps")
    else:
        for i in range(1, 60):
            w.train_panel.plot.add(i, 2.0 / i**0.7, "loss")
            w.train_panel.plot.add(i, 0.5 / i**0.9, "sdf")
        w.train_panel.log.appendPlainText("(illustration: plotted values are synthetic)")
    settle()
    w.grab().save(str(out / "panel_training.png"))
    w.docks["Export"].raise_()
    w.export_panel.info.setText("Saved face.ply: units: millimetres, with vertex colours")
    settle()
    w.grab().save(str(out / "panel_export.png"))
    w.doc.set_color_mode("shaded")
    w.docks["Fit"].raise_()
    settle()


if __name__ == "__main__":
    sys.exit(run())
