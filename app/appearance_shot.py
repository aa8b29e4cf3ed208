"""The README's Appearance screenshot (needs a display, e.g. Xvfb):

    xvfb-run -a -s "-screen 0 1600x1000x24" python -m app.appearance_shot --out OUT

Paints the model's mean face with a synthetic skin / cheeks / lips / brows / eyes pattern, writes
it as a coloured PLY in millimetres (OUT/synthetic_coloured_face.ply), loads it from the Appearance
panel (load, automatic alignment, fit, colour transfer), then shows the 2_smile expression and
saves OUT/appearance.png. Prints one JSON line (fit residual, seconds, what the panel says).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SKIN, CHEEK_TINT = np.array([222.0, 176.0, 150.0]), np.array([10.0, -25.0, -20.0])
LIPS, BROWS, EYES = (178, 82, 88), (92, 64, 48), (70, 60, 58)


def painted_face(vertices: np.ndarray) -> np.ndarray:
    """sRGB uint8 per vertex of a face in the model frame (units of 100 mm, nose tip at z 0.4)."""
    x, y, z = vertices[:, 0], vertices[:, 1], vertices[:, 2]
    rgb = np.tile(SKIN, (len(vertices), 1)) * (0.9 + 0.1 * np.clip(z / 0.4, 0, 1))[:, None]
    rgb += np.exp(-(((np.abs(x) - 0.38) / 0.12) ** 2 + ((y + 0.05) / 0.12) ** 2))[:, None] * CHEEK_TINT
    rgb[(x / 0.23) ** 2 + ((y + 0.31) / 0.085) ** 2 < 1] = LIPS
    brow_line = 0.55 - 0.25 * (np.abs(x) - 0.3) ** 2
    rgb[(np.abs(x) > 0.1) & (np.abs(x) < 0.52) & (np.abs(y - brow_line) < 0.035) & (z > -0.1)] = BROWS
    rgb[((np.abs(x) - 0.29) / 0.1) ** 2 + ((y - 0.36) / 0.045) ** 2 < 1] = EYES
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def write_scan(session, path: Path) -> Path:
    import trimesh

    mesh = session.extract(session.mean_codes(), 128)
    scan = trimesh.Trimesh(mesh.vertices * 100.0, mesh.faces, process=False)  # millimetres
    rgb = painted_face(mesh.vertices)
    scan.visual.vertex_colors = np.column_stack([rgb, np.full(len(rgb), 255, np.uint8)])
    scan.export(path)
    return path


def run(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from PyQt6.QtCore import QSettings
    from PyQt6.QtWidgets import QApplication

    qt_app = QApplication.instance() or QApplication(sys.argv[:1])  # noqa: F841 - kept alive
    from app.smoke import settle
    from app.window import MainWindow
    from app.workers import wait_for
    from imface.session import Session

    session = Session.load()
    scan = write_scan(session, out / "synthetic_coloured_face.ply")
    w = MainWindow(session, settings=QSettings(str(out / "settings.ini"), QSettings.Format.IniFormat))
    w.quiet = True
    w.resize(1280, 800)
    w.show()
    wait_for(lambda: w.mesh_stage == "fine", 300)
    w.docks["Appearance"].raise_()
    started = time.perf_counter()
    w.appearance.load_scan(str(scan))
    wait_for(lambda: w.doc.fit is not None or bool(w.errors), 900)
    fit_seconds = time.perf_counter() - started
    w.morph_panel.expr.setCurrentText("2_smile")
    w.morph_panel._apply_expression()
    settle(w)
    coloured = wait_for(lambda: w.viewport.colors.get("face") is not None and not w.jobs.busy, 120)
    w.grab().save(str(out / "appearance.png"))
    report = {
        "fit": w.fit_panel.result_label.text(),
        "load_fit_transfer_seconds": round(fit_seconds, 1),
        "panel": w.appearance_panel.info.text(),
        "coloured": bool(coloured),
        "errors": w.errors,
    }
    print(json.dumps(report))
    w.shutdown()
    return 0 if coloured and not w.errors else 1


if __name__ == "__main__":
    sys.exit(run())
