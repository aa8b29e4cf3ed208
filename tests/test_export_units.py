"""Export units: GLB in metres everywhere (the glTF rule), OBJ/PLY/STL in millimetres, the unit
in every export's sidecar; honest rig counts; CLI help without markup and with defaults."""

import json

import numpy as np
import pytest
import torch
import trimesh

from imface.cli import main
from imface.io import TrainedCodes, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(face_model, tmp_path_factory):
    cfg = face_model.config
    gen = torch.Generator().manual_seed(0)
    labels = ["2_smile", "21_random", "3_mouth_stretch", "1_neutral"]  # as FaceScape corpora hold
    codes = TrainedCodes(
        z_id=torch.randn(2, cfg.id_dim, generator=gen) * 0.3,
        z_exp=torch.randn(len(labels), cfg.exp_dim, generator=gen) * 0.3,
        identity_labels=["001", "002"],
        expression_labels=labels,
    )
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors", face_model, codes, {"step": 1})


def extent(path) -> float:
    return float(np.ptp(trimesh.load(path, force="mesh", process=False).vertices, axis=0).max())


def test_generate_glb_is_in_metres_and_ply_in_mm(checkpoint, tmp_path):
    for fmt in ("glb", "ply"):
        args = [
            "generate",
            "--checkpoint",
            str(checkpoint),
            "--n",
            "1",
            "--resolution",
            "40",
            "--format",
            fmt,
        ]
        assert main([*args, "--out", str(tmp_path / fmt)]) == 0
    size_m, size_mm = extent(tmp_path / "glb" / "face_000.glb"), extent(tmp_path / "ply" / "face_000.ply")
    assert size_m == pytest.approx(size_mm / 1000.0, rel=1e-4) and 0.05 < size_m < 0.25
    for fmt, unit in (("glb", "m"), ("ply", "mm")):
        sidecar = json.loads((tmp_path / fmt / f"face_000.{fmt}.json").read_text())
        assert sidecar["unit"] == unit and "frame" in sidecar


def test_rig_units_agree_and_counts_are_honest(checkpoint, tmp_path):
    out = tmp_path / "rig"
    args = [
        "rig",
        "--checkpoint",
        str(checkpoint),
        "--identity",
        "0",
        "--resolution",
        "40",
        "--format",
        "glb",
    ]
    assert main([*args, "--out", str(out)]) == 0
    manifest = json.loads((out / "rig.json").read_text())
    assert manifest["expressions"] == ["2_smile", "3_mouth_stretch"]  # named expressions only
    assert manifest["meshes"] == 3 and manifest["morph_targets"] == 2
    assert manifest["units"] == {"glb": "m"}
    assert extent(out / "1_neutral.glb") == pytest.approx(extent(out / "rig.glb"), rel=1e-3)  # both metres
    assert json.loads((out / "2_smile.glb.json").read_text())["unit"] == "m"


def test_help_has_no_markup_and_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "rig" in text
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 128)" in text and "(default: 0.85)" in text and "GLB in metres" in text
