"""`python -m imface extract` / `export-topology` on a small checkpoint."""

import numpy as np
import pytest

from imface.cli import main
from imface.extract.cli import load_mesh
from imface.io import TrainedCodes, save_checkpoint
from imface.testing import sample_codes


@pytest.fixture(scope="module")
def checkpoint(face_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    codes = sample_codes(face_model.config, seed=0, faces=2)
    trained = TrainedCodes(
        z_id=codes.z_id,
        z_exp=codes.z_exp,
        identity_labels=["001", "002"],
        expression_labels=["2_smile", "2_smile"],
        expression_identity=[0, 1],
    )
    save_checkpoint(path, face_model, trained)
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
            "--expression",
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
    assert "no such checkpoint" in capsys.readouterr().err
