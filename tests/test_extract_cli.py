"""`python -m imface extract` / `export-topology` on a tiny model through a stand-in checkpoint
loader (imface.io is written in parallel; its real loader is used when a shipped checkpoint
exists)."""

import importlib.machinery
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from imface.cli import main
from imface.config import ModelConfig
from imface.extract.cli import load_mesh
from imface.testing import face_like_model, sample_codes


@pytest.fixture(scope="module")
def tiny_face():
    return face_like_model(ModelConfig.tiny(), steps=100)


@pytest.fixture
def checkpoint(tmp_path, monkeypatch, tiny_face):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"stand-in")
    codes = sample_codes(tiny_face.config, seed=0, faces=2)
    loaded = types.SimpleNamespace(model=tiny_face, codes=codes)
    fake = types.ModuleType("imface.io")
    fake.__spec__ = importlib.machinery.ModuleSpec("imface.io", None)  # the CLI looks modules up
    fake.load_checkpoint = lambda p: loaded if Path(p) == path else None
    monkeypatch.setitem(sys.modules, "imface.io", fake)
    return path, codes


def test_export_topology_then_extract_on_it(tmp_path, checkpoint):
    ckpt, codes = checkpoint
    topo = tmp_path / "topology.ply"
    assert main(["export-topology", "--checkpoint", str(ckpt), "--resolution", "33", "-o", str(topo)]) == 0
    template = load_mesh(topo)
    assert template.num_vertices > 100

    faces = []
    for index in (0, 1):
        out = tmp_path / f"face{index}.ply"
        argv = [
            "extract",
            "--checkpoint",
            str(ckpt),
            "--index",
            str(index),
            "--topology",
            str(topo),
        ]
        assert main([*argv, "-o", str(out)]) == 0
        faces.append(load_mesh(out))
    # one topology shared by every face, with different geometry
    for mesh in faces:
        np.testing.assert_array_equal(mesh.faces, template.faces)
    assert np.abs(faces[0].vertices - faces[1].vertices).max() > 1e-3


def test_extract_band_and_dense_agree(tmp_path, checkpoint):
    ckpt, _ = checkpoint
    meshes = {}
    for method in ("band", "dense"):
        out = tmp_path / f"{method}.ply"
        argv = ["extract", "--checkpoint", str(ckpt), "--resolution", "33", "--method", method]
        assert main([*argv, "--coarse-resolution", "9", "-o", str(out)]) == 0
        meshes[method] = load_mesh(out)
    assert meshes["band"].num_vertices == meshes["dense"].num_vertices


def test_missing_checkpoint_is_a_user_error(tmp_path, capsys):
    assert main(["extract", "--checkpoint", str(tmp_path / "nope.safetensors"), "-o", "x.ply"]) == 1
    assert "not found" in capsys.readouterr().err
