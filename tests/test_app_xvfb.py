"""The real window under Xvfb: open the editor, move a slider, drop a synthetic scan, wait for the
fit, check the screenshot's face pixels. Runs `python -m app.smoke` in a child process under
xvfb-run (skipped where xvfb-run is not installed; .ci/run installs it)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.gui
@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="xvfb-run is not installed")
def test_real_window_under_xvfb(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("QT_QPA_PLATFORM", None)
    cmd = [
        "xvfb-run",
        "-a",
        "-s",
        "-screen 0 1600x1000x24",
        sys.executable,
        "-m",
        "app.smoke",
        "--out",
        str(tmp_path),
        "--fake",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    report = tmp_path / "smoke.json"
    assert report.exists(), proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(report.read_text())
    print("smoke:", result)
    assert result["errors"] == []
    assert result["first_mesh"] and result["mesh_changed"] and result["undo_steps_after_drag"] == 1
    assert result["fit_done"]
    from PIL import Image

    for name in ("face.png", "fit.png", "window.png"):
        img = np.asarray(Image.open(tmp_path / name).convert("RGB")).astype(int)
        assert img.shape[0] > 200 and img.shape[1] > 200
    face = np.asarray(Image.open(tmp_path / "face.png").convert("RGB")).astype(int)
    skin = (face[..., 0] > 120) & (face[..., 0] - face[..., 2] > 30)  # the face colour, not grey
    assert skin.mean() > 0.02
    assert proc.returncode == 0
