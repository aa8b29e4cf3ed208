"""Command line: info, generate, rig, correspond on a small checkpoint; clear errors."""

import json

import numpy as np
import pytest
import torch
import trimesh

from imface.cli import main
from imface.io import TrainedCodes, save_checkpoint
from tests.data_fixtures import synth_corpus  # noqa: F401


@pytest.fixture(scope="module")
def checkpoint(face_model, tmp_path_factory):
    cfg = face_model.config
    gen = torch.Generator().manual_seed(0)
    codes = TrainedCodes(
        z_id=torch.randn(3, cfg.id_dim, generator=gen) * 0.3,
        z_exp=torch.randn(4, cfg.exp_dim, generator=gen) * 0.3,
        identity_labels=["001", "002", "003"],
        expression_labels=["2_smile", "16_grin", "2_smile", "3_mouth_stretch"],
    )
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors", face_model, codes, {"step": 1})


def test_info_prints_the_checkpoint_summary(checkpoint, capsys):
    assert main(["info", str(checkpoint)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["identities"] == 3 and summary["expression_codes"] == 4


def test_bad_checkpoint_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x80\x04not really")
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "broken.safetensors" in err and "\n" not in err


def test_generate_writes_meshes_in_mm_with_their_codes(checkpoint, tmp_path):
    out = tmp_path / "gen"
    assert (
        main(
            ["generate", "--checkpoint", str(checkpoint), "--n", "2", "--out", str(out), "--resolution", "40"]
        )
        == 0
    )
    meshes = sorted(out.glob("face_*.ply"))
    assert len(meshes) == 2
    mesh = trimesh.load(meshes[0], process=False)
    assert 50 < np.ptp(mesh.vertices, axis=0).max() < 250  # a face-sized object in mm
    codes = json.loads((out / "face_000.json").read_text())
    assert len(codes["z_id"]) == 10


def _vertices(path):
    return np.asarray(trimesh.load(path, process=False).vertices)


def test_rig_and_transfer(checkpoint, tmp_path):
    out = tmp_path / "rig"
    assert (
        main(
            [
                "rig",
                "--checkpoint",
                str(checkpoint),
                "--identity",
                "1",
                "--out",
                str(out),
                "--resolution",
                "40",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "rig.json").read_text())
    assert manifest["expressions"] == ["2_smile", "3_mouth_stretch", "16_grin"]  # FaceScape order
    shapes = {
        trimesh.load(out / f"{name}.ply", process=False).vertices.shape
        for name in ["1_neutral", *manifest["expressions"]]
    }
    assert len(shapes) == 1  # one shared topology
    assert (out / "rig.glb").stat().st_size > 0
    codes = tmp_path / "a.json"
    codes.write_text(json.dumps({"z_id": [0.1] * 10, "z_exp": [0.2] * 10}))
    assert (
        main(
            [
                "rig",
                "--checkpoint",
                str(checkpoint),
                "--codes",
                str(codes),
                "--expression-from",
                str(codes),
                "--out",
                str(out),
                "--resolution",
                "40",
            ]
        )
        == 0
    )
    own_face = _vertices(out / "transfer.ply")  # B's codes, B's expression
    # A's expression as its offset from A's neutral: A with no offset leaves B's own face
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"z_id": [-0.3] * 10, "z_exp": [0.5] * 10}))
    offset = ["--expression-from", str(other), "--expression-neutral", str(other)]
    rig_b = ["rig", "--checkpoint", str(checkpoint), "--codes", str(codes), "--out", str(out)]
    assert main([*rig_b, *offset, "--resolution", "40"]) == 0
    assert np.allclose(_vertices(out / "transfer.ply"), own_face, atol=1e-3)  # mm: float rounding
    assert main([*rig_b, "--expression-from", str(other), "--resolution", "40"]) == 0
    assert not np.allclose(_vertices(out / "transfer.ply").mean(0), own_face.mean(0))
    assert main([*rig_b, "--expression-neutral", str(other)]) == 1  # an offset needs its expression
    assert main(["rig", "--checkpoint", str(checkpoint), "--identity", "7", "--out", str(out)]) == 1


def test_correspond_two_code_files(checkpoint, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"z_id": [0.2] * 10, "z_exp": [0.0] * 10}))
    b.write_text(json.dumps({"z_id": [-0.2] * 10, "z_exp": [0.3] * 10}))
    out = tmp_path / "corr"
    assert (
        main(
            [
                "correspond",
                str(a),
                str(b),
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(out),
                "--resolution",
                "40",
                "--pattern",
                "checker",
            ]
        )
        == 0
    )
    mapping = np.load(out / "a_to_b.npy")
    mesh_a = trimesh.load(out / "a.ply", process=False)
    assert len(mapping) == len(mesh_a.vertices)
    assert len(np.unique(mesh_a.visual.vertex_colors[:, :3], axis=0)) == 2
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"z_id": [0.0] * 3, "z_exp": [0.0] * 3}))
    assert main(["correspond", str(wrong), str(b), "--checkpoint", str(checkpoint), "--out", str(out)]) == 1


def test_fit_folder_is_resumable_and_reports_non_faces(checkpoint, synth_corpus, tmp_path, capsys):  # noqa: F811
    scans, out = tmp_path / "scans", tmp_path / "fitted"
    (scans / "sub").mkdir(parents=True)
    face = trimesh.load(synth_corpus / "001/1_neutral.ply", process=False)
    face.vertices = face.vertices * 0.001 + [0.5, 0.2, 1.0]  # metres, moved
    face.export(scans / "face.ply")
    trimesh.creation.icosphere(3, radius=80).export(scans / "sub" / "ball.stl")
    args = ["fit", str(scans), "--out", str(out), "--checkpoint", str(checkpoint)]
    args += ["--iterations", "3", "--resolution", "32", "--keep-poor"]  # a toy network fits poorly
    assert main(args) == 1  # one scan failed
    assert "does not look like a face" in (out / "sub" / "ball.error.txt").read_text()
    fitted = trimesh.load(out / "face.ply", process=False)
    assert np.linalg.norm(fitted.vertices.mean(0) - face.vertices.mean(0)) < 0.05  # back on the scan
    assert np.ptp(fitted.vertices, axis=0).max() < 0.3  # in the scan's unit (m)
    report = json.loads((out / "face.report.json").read_text())
    # a poor fit is retried once with restarts and 1.5x the iterations (the toy network fits poorly)
    assert (
        report["iterations"] in (3, 4)
        and len(json.loads((out / "face.codes.json").read_text())["z_id"]) == 10
    )
    capsys.readouterr()
    main(args)  # resumes: the finished scan is skipped, the failed one retried
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"fitted": 0, "skipped": 1, "failed": 1, "out": str(out)}


@pytest.mark.parametrize("command", ["synth", "prepare", "train", "eval", "fit", "appearance"])
def test_every_option_explains_itself_in_help(command):
    """`--help` of every command (and of its actions, as `appearance train`) gives each option a
    line of help; a default, where there is one, is shown."""
    import argparse

    from imface.cli import build_parser

    def options(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for nested in action.choices.values():
                    yield from options(nested)
            elif action.dest != "help":
                yield parser, action

    top = build_parser([command])
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for parser, action in options(sub):
        assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help"
        if action.option_strings and action.default not in (None, False, True):
            assert "default" in parser.format_help() and str(action.default) in parser.format_help()
