"""Face-like networks and mesh metrics for tests and benchmarks (no training data needed).

`face_like_model` overfits TempNet to an analytic face-ish SDF (an ellipsoid with a nose bump, nose
tip at (0, 0, 0.4) as in the model frame) and gives ExpNet / IDNet random non-zero output layers,
so that codes move the surface by a few millimetres while zero codes leave the template alone.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from imface.config import ModelConfig
from imface.metrics import sample_surface
from imface.model.imface import Codes, ImFace

HEAD_CENTER = (0.0, 0.0, -0.15)
HEAD_RADII = (0.7, 0.9, 0.45)  # front of the head at z = 0.3
NOSE_CENTER = (0.0, 0.0, 0.28)
NOSE_RADIUS = 0.12  # nose tip at z = 0.4


def face_sdf_analytic(p: Tensor) -> Tensor:
    """Approximate SDF of the toy face: smooth union of an ellipsoid and a nose sphere."""
    q = (p - p.new_tensor(HEAD_CENTER)) / p.new_tensor(HEAD_RADII)
    k0 = q.norm(dim=-1)
    k1 = (q / p.new_tensor(HEAD_RADII)).norm(dim=-1).clamp_min(1e-6)
    head = k0 * (k0 - 1.0) / k1  # ellipsoid distance bound (exact on the surface)
    nose = (p - p.new_tensor(NOSE_CENTER)).norm(dim=-1) - NOSE_RADIUS
    k = 0.05  # polynomial smooth minimum: no crease where the nose meets the face
    h = (0.5 + 0.5 * (nose - head) / k).clamp(0, 1)
    return nose * (1 - h) + head * h - k * h * (1 - h)


def _training_points(n: int, generator: torch.Generator) -> Tensor:
    """Half uniform in the unit cube, half near the surface (where accuracy matters)."""
    uniform = torch.rand(n // 2, 3, generator=generator) * 2 - 1
    near = torch.rand(n - n // 2, 3, generator=generator) * 2 - 1
    with torch.enable_grad():
        x = near.requires_grad_(True)
        s = face_sdf_analytic(x)
        (g,) = torch.autograd.grad(s.sum(), x)
    near = near.detach() - s.detach()[:, None] * g / g.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    near = near + 0.02 * torch.randn(near.shape, generator=generator)
    return torch.cat([uniform, near])


def fit_template(model: ImFace, steps: int = 300, points: int = 4096, lr: float = 3e-4, seed: int = 0):
    """Overfit TempNet to the toy face: L1 on the clamped SDF, a few hundred Adam steps."""
    gen = torch.Generator().manual_seed(seed)
    params = list(model.template_field.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        x = _training_points(points, gen)
        target = face_sdf_analytic(x).clamp(-0.2, 0.2)
        pred = model.template_sdf(x[None])[0]
        loss = (pred.clamp(-0.2, 0.2) - target).abs().mean() + 0.1 * (pred - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def _randomize_output_layers(field, generator: torch.Generator, scale: float) -> None:
    """Random last hyper layer: generated last SIREN layers become non-zero and code dependent
    (zero codes still give zero hidden activations in the ReLU hyper net, hence the identity)."""
    weight = field.hypers[-1].weights[-1]
    with torch.no_grad():
        weight.copy_(torch.randn(weight.shape, generator=generator) * scale)


def face_like_model(
    config: ModelConfig | None = None,
    steps: int = 300,
    seed: int = 0,
    warp_mm: float = 4.0,
) -> ImFace:
    """A face-like ImFace without training data. Codes drawn by `sample_codes` move the surface by
    about `warp_mm` millimetres RMS."""
    torch.manual_seed(seed)
    model = ImFace(config or ModelConfig())
    fit_template(model, steps=steps, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for field in (model.exp_field, model.id_field):
        _randomize_output_layers(field, gen, 1.0)
    _calibrate_warps(model, warp_mm / 100.0, seed)
    return model.eval()


def _calibrate_warps(model: ImFace, target_rms: float, seed: int) -> None:
    """Scale the random output layers so a typical code moves surface points by target_rms."""
    gen = torch.Generator().manual_seed(seed + 2)
    x = _training_points(2048, gen)[1024:][None]
    codes = sample_codes(model.config, seed=seed + 3)
    with torch.no_grad():
        prep = model.prepare(codes)
        for name in ("exp", "id"):
            field = model.exp_field if name == "exp" else model.id_field
            if name == "exp":
                moved = model.expression_warp(x, prep)
            else:
                moved, _ = model.identity_warp(x, prep)
            rms = float((moved - x).norm(dim=-1).pow(2).mean().sqrt())
            field.hypers[-1].weights[-1].mul_(target_rms / max(rms, 1e-9) / math.sqrt(2))
            prep = model.prepare(codes)
    _shrink_correction(model.id_field, 0.1)


def _shrink_correction(field, factor: float) -> None:
    """IDNet's last channel is the SDF correction delta: keep it a small correction, as trained
    models do (it is L1-regularised), rather than as large as the warp."""
    out_f, in_f = field.shapes[-1]
    weight = field.hypers[-1].weights[-1]  # (G, out_f * in_f + out_f, hidden)
    rows = list(range((out_f - 1) * in_f, out_f * in_f)) + [out_f * in_f + out_f - 1]
    with torch.no_grad():
        weight[:, rows] *= factor


def sample_codes(config: ModelConfig, seed: int = 0, std: float = 0.3, faces: int = 1) -> Codes:
    gen = torch.Generator().manual_seed(seed)
    z_id = torch.randn(faces, config.id_dim, generator=gen) * std
    z_exp = torch.randn(faces, config.exp_dim, generator=gen) * std
    return Codes(z_id, z_exp)


# -- metrics --------------------------------------------------------------------------------
def _point_to_surface(points: np.ndarray, mesh, count: int, seed: int) -> np.ndarray:
    """Distance from points to a mesh, point-to-plane against a dense sampling of it: the nearest
    sample's tangent plane, so the result has no sampling floor (plain point-to-point Chamfer
    between two samplings of one surface is ~0.3 mm at 100 k points)."""
    from scipy.spatial import cKDTree

    sample = sample_surface(mesh.vertices, mesh.faces, count, seed)
    ref, normals = sample.points, sample.normals
    _, idx = cKDTree(ref).query(points)
    return np.abs(((points - ref[idx]) * normals[idx]).sum(-1))


def chamfer_mm(a, b, count: int = 100_000, seed: int = 0) -> float:
    """Symmetric Chamfer-L1 (point-to-plane) between two meshes in millimetres (1 unit = 100 mm)."""
    pa = sample_surface(a.vertices, a.faces, count, seed).points
    pb = sample_surface(b.vertices, b.faces, count, seed + 1).points
    d_ab = _point_to_surface(pa, b, 4 * count, seed + 2).mean()
    d_ba = _point_to_surface(pb, a, 4 * count, seed + 3).mean()
    return float(0.5 * (d_ab + d_ba) * 100.0)


def tiny_session(model: ImFace, identities: int = 4, seed: int = 0):
    """A real ``imface.session.Session`` on a small model: random training-like codes with
    FaceScape labels (two expressions per identity), so sliders, expressions and rigs work."""
    from imface.io import TrainedCodes
    from imface.session import Session

    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    labels = ["2_smile", "3_mouth_stretch"] * identities
    codes = TrainedCodes(
        z_id=torch.randn(identities, cfg.id_dim, generator=gen) * 0.3,
        z_exp=torch.randn(len(labels), cfg.exp_dim, generator=gen) * 0.3,
        identity_labels=[f"id{i}" for i in range(identities)],
        expression_labels=labels,
        expression_identity=[i // 2 for i in range(len(labels))],
    )
    return Session.from_model(model, codes, sha256=f"tiny-{seed}")


def non_faces() -> dict:
    """Head-sized non-faces (trimesh meshes, mm): smooth ones that hug a face's cheeks, edged ones with a
    nose-like corner, and random blobs and a hand."""
    import trimesh

    rng = np.random.default_rng(0)
    ball = trimesh.creation.icosphere(4, radius=100)
    n = ball.vertex_normals
    bumps = sum(
        rng.normal() * 15 * np.sin(n @ rng.normal(size=3) * rng.uniform(1, 3) + rng.uniform(0, 6))
        for _ in range(6)
    )
    hand = [trimesh.creation.box([90, 100, 30])]
    for i, x in enumerate([-33, -11, 11, 33]):
        finger = trimesh.creation.capsule(70 + 10 * (i % 2), 9)
        finger.apply_translation([x, 100, 0])
        hand.append(finger)
    thumb = trimesh.creation.capsule(55, 11)
    thumb.apply_transform(trimesh.transformations.rotation_matrix(1.0, [0, 0, 1]))
    thumb.apply_translation([-60, 10, 5])
    hand.append(thumb)
    return {
        "sphere": ball,
        "cube": trimesh.creation.box([200] * 3).subdivide().subdivide().subdivide().subdivide(),
        "torus": trimesh.creation.torus(100, 35),
        "ellipsoid": trimesh.Trimesh(ball.vertices * [0.8, 1.1, 0.95], ball.faces),
        "cylinder": trimesh.creation.cylinder(80, 200, sections=64).subdivide().subdivide(),
        "blob": trimesh.Trimesh(ball.vertices + n * bumps[:, None], ball.faces),
        "hand": trimesh.util.concatenate(hand),
    }
