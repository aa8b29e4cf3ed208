"""Fitting codes, correspondence painting, sampling and the expression rig (on a toy network)."""

import json
import struct

import numpy as np
import pytest
import torch

from imface.config import FitConfig
from imface.correspond import correspondence, paint, template_coordinates
from imface.extract import extract_narrow_band, face_sdf
from imface.fit.codes import CodeProblem, fit_codes, fit_codes_job, fit_many_codes_job
from imface.generate import build_rig, write_glb_with_morph_targets
from imface.jobs import drive
from imface.metrics import compare_meshes
from imface.model import Codes
from imface.testing import sample_codes


def sdf_samples(model, codes, surface=4000, space=2000, seed=0):
    """SDF samples of a face of the model itself: surface points with normals, space points."""
    mesh = extract_narrow_band(face_sdf(model, codes), resolution=64, coarse_resolution=16).mesh
    gen = torch.Generator().manual_seed(seed)
    verts = torch.from_numpy(mesh.vertices)
    pick = torch.randint(len(verts), (surface,), generator=gen)
    points = verts[pick].clone().requires_grad_(True)
    prep = model.prepare(codes)
    s = model.query(points, prep).sdf
    (grad,) = torch.autograd.grad(s.sum(), points)
    space_points = torch.rand(space, 3, generator=gen) * 2 - 1
    with torch.no_grad():
        space_sdf = model.query(space_points, prep).sdf
    return mesh, {
        "surface_points": points.detach(),
        "surface_normals": torch.nn.functional.normalize(grad, dim=-1),
        "space_points": space_points,
        "space_sdf": space_sdf,
    }


def test_fit_recovers_the_surface_of_a_face(face_model):
    target = sample_codes(face_model.config, seed=11, std=0.3)
    mesh, samples = sdf_samples(face_model, target)
    start = extract_narrow_band(face_sdf(face_model, Codes.zeros(face_model.config)), 64, 16).mesh
    calls = []
    cfg = FitConfig(iterations=40, lr=3e-2, points_per_step=1024, restarts=2, embedding_weight=0.0)
    fit = fit_codes(face_model, samples, cfg, spread=(0.1, 0.1), progress=calls.append)
    fitted = extract_narrow_band(face_sdf(face_model, fit.codes), 64, 16).mesh
    before = compare_meshes(start.vertices, start.faces, mesh.vertices, mesh.faces, 20000)["chamfer_mm"]
    after = compare_meshes(fitted.vertices, fitted.faces, mesh.vertices, mesh.faces, 20000)["chamfer_mm"]
    assert after < 0.5 * before, (before, after)
    assert fit.history[-1] < fit.history[0]
    assert len(calls) == 40 and calls[-1].done == 40 and calls[-1].values["loss"] == fit.history[-1]
    assert all(p.requires_grad for p in face_model.parameters())  # network left trainable


def test_fit_with_a_known_identity_moves_only_the_expression(face_model):
    target = sample_codes(face_model.config, seed=5, std=0.3)
    _, samples = sdf_samples(face_model, target)
    known = target.z_id[0] + 0.01
    cfg = FitConfig(iterations=15, points_per_step=512, embedding_weight=0.0)
    start = target.z_exp[0] * 0.5
    fit = fit_codes(face_model, samples, cfg, init_id=known, init_exp=start, fixed_identity=known)
    assert torch.equal(fit.codes.z_id[0], known)
    assert not torch.equal(fit.codes.z_exp[0], start)
    assert fit.history[-1] < fit.history[0]


def test_scans_fitted_together_get_the_codes_they_get_alone(face_model):
    """fit DIR batches scans: each row keeps its own samples and loss (one scan's hashed,
    ragged batches beside another's random ones), so nothing leaks between the scans."""
    problems = []
    for seed, surface in ((11, 4000), (12, 2500)):
        _, samples = sdf_samples(
            face_model, sample_codes(face_model.config, seed=seed, std=0.3), surface, seed=seed
        )
        problems.append(CodeProblem(samples))
    gen = torch.Generator().manual_seed(0)
    problems[1].samples["surface_hash"] = torch.rand(2500, generator=gen)
    problems[1].samples["space_hash"] = torch.rand(2000, generator=gen)
    cfg = FitConfig(iterations=25, lr=3e-2, points_per_step=1024, restarts=2, embedding_weight=0.0)
    together = drive(fit_many_codes_job(face_model, problems, cfg, spread=(0.1, 0.1)))
    for problem, fit in zip(problems, together, strict=True):
        alone = fit_codes(face_model, problem.samples, cfg, spread=(0.1, 0.1))
        assert torch.allclose(fit.codes.z_id, alone.codes.z_id, atol=1e-4)
        assert torch.allclose(fit.codes.z_exp, alone.codes.z_exp, atol=1e-4)
        assert fit.history[-1] == pytest.approx(alone.history[-1], rel=1e-4)
        assert fit.history[-1] < fit.history[0]
    assert not torch.allclose(together[0].codes.z_id, together[1].codes.z_id, atol=1e-2)


def test_fit_can_be_cancelled(face_model):
    _, samples = sdf_samples(face_model, sample_codes(face_model.config, seed=3))
    job = fit_codes_job(face_model, samples, FitConfig(iterations=50, points_per_step=512))
    done = [record.done for record, _ in zip(job, range(3), strict=False)]
    job.close()  # how every driver cancels a job
    assert done == [1, 2, 3]
    with pytest.raises(StopIteration):
        next(job)
    assert all(p.requires_grad for p in face_model.parameters())  # network left trainable


def test_correspondence_follows_template_space(face_model):
    codes_a = sample_codes(face_model.config, seed=1)
    codes_b = sample_codes(face_model.config, seed=2)
    mesh = extract_narrow_band(face_sdf(face_model, codes_a), 48, 16).mesh
    template_a = template_coordinates(face_model, codes_a, mesh.vertices)
    # the same template points seen from face B: invert B's warp with the morph engine
    from imface.extract import MorphEngine

    engine = MorphEngine(face_model, mesh, codes_a)
    moved = engine.morph(codes_b)
    template_b = template_coordinates(face_model, codes_b, moved.vertices)
    index, distance = correspondence(template_a, template_b)
    ok = moved.converged
    assert (index[ok] == np.arange(len(index))[ok]).mean() > 0.95
    assert np.median(distance[ok]) < 5e-3  # the final projection onto f = 0 moves a little
    colours = paint(template_a, "checker")
    assert colours.shape == (len(template_a), 3) and len(np.unique(colours, axis=0)) == 2
    np.testing.assert_allclose(paint(template_a), np.clip((template_a + 1) / 2, 0, 1))
    image = np.zeros((4, 4, 3), np.uint8)
    image[:2] = 255  # top half white
    painted = paint(np.array([[0.0, 0.9, 0.0], [0.0, -0.9, 0.0]]), image=image)
    np.testing.assert_allclose(painted, [[1, 1, 1], [0, 0, 0]])


def test_rig_shares_one_topology_and_writes_a_valid_glb(face_model, tmp_path):
    z_id = sample_codes(face_model.config, seed=5).z_id[0]
    expressions = {"2_smile": torch.randn(face_model.config.exp_dim) * 0.3, "4_anger": torch.zeros(10)}
    base, faces, targets, failures = build_rig(face_model, z_id, expressions, resolution=48)
    assert set(targets) == {"2_smile", "4_anger"}
    assert all(t.shape == base.shape for t in targets.values())
    assert np.abs(targets["2_smile"] - base).max() > 1e-4  # the expression moves the face
    path = write_glb_with_morph_targets(tmp_path / "rig.glb", base, faces, targets)
    data = path.read_bytes()
    magic, version, total = struct.unpack("<III", data[:12])
    assert (magic, version, total) == (0x46546C67, 2, len(data))
    json_len, _ = struct.unpack("<II", data[12:20])
    doc = json.loads(data[20 : 20 + json_len])
    assert doc["meshes"][0]["extras"]["targetNames"] == ["2_smile", "4_anger"]
    bin_start = 20 + json_len + 8
    view = doc["bufferViews"][doc["accessors"][2]["bufferView"]]
    offset = bin_start + view["byteOffset"]
    delta = np.frombuffer(data[offset : offset + view["byteLength"]], np.float32).reshape(-1, 3)
    np.testing.assert_allclose(base + delta, targets["2_smile"], atol=1e-6)
    import trimesh

    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.vertices) == len(base)
