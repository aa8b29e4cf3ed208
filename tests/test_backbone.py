"""The linear backbone: at any codes the warps start from the linear face's correspondence."""

import numpy as np
import torch

from imface.config import ModelConfig
from imface.model import Codes, ImFace
from imface.model.backbone import LinearBackbone
from imface.model.basis import ShapeBasis
from imface.model.imface import spatial_gradient
from tests.test_model import perturb


def sheet_basis(id_dim=4, exp_dim=3):
    """A 0.8 x 0.8 sheet of vertices at z = 0.3. Identity 0 bulges it smoothly forward, identity 1
    shears it sideways; expression 0 lifts its lower half (a moving 'jaw')."""
    g = np.linspace(-0.4, 0.4, 41)
    x, y = np.meshgrid(g, g, indexing="ij")
    mean = np.stack([x.ravel(), y.ravel(), np.full(x.size, 0.3)], -1)
    identity = np.zeros((id_dim, len(mean), 3))
    identity[0, :, 2] = 0.05 * np.cos(2.0 * mean[:, 0]) * np.cos(2.0 * mean[:, 1])
    identity[1, :, 0] = 0.03 * mean[:, 1]
    expression = np.zeros((exp_dim, len(mean), 3))
    expression[0, :, 1] = 0.04 * np.clip(-mean[:, 1], 0, None)
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return ShapeBasis(t(mean), t(identity), t(expression))


def unseen_codes(basis):
    """(1, 4), (1, 3) codes far from the mean: a strong bulge and shear, the 'jaw' well open."""
    id_std, exp_std = basis.code_std()
    z_id = torch.zeros(1, 4)
    z_id[0, :2] = torch.tensor([2.5, -2.0]) * id_std[:2]
    z_exp = torch.zeros(1, 3)
    z_exp[0, 0] = 2.0 * exp_std[0]
    return z_id, z_exp


def test_the_backbone_carries_every_linear_face_back_to_the_mean():
    """For codes the training never saw, each vertex of the linear face is sent to its own mean
    vertex: d(q) is found where the face is, not where the mean is."""
    basis = sheet_basis()
    backbone = LinearBackbone(basis)
    z_id, z_exp = unseen_codes(basis)
    face = basis.face(z_id[0], z_exp[0])
    neutral = basis.face(z_id[0], torch.zeros(3))
    interior = (basis.mean[:, :2].abs() < 0.3).all(1)
    faces = backbone.faces(z_id, z_exp)

    e = backbone.expression_displacement(faces, torch.tensor([0]), face[None])[0]
    canonical = face - e
    error = (canonical - neutral)[interior].norm(dim=1)
    moved = (face - neutral)[interior].norm(dim=1)
    assert float(moved.max()) > 0.015
    assert float(error.max()) < 0.1 * float(moved.max()), (float(error.max()), float(moved.max()))

    d = backbone.identity_displacement(faces, neutral[None])[0]
    error = (neutral - d - basis.mean)[interior].norm(dim=1)
    shift = (neutral - basis.mean)[interior].norm(dim=1)
    assert float(shift.max()) > 0.08
    assert float(error.max()) < 0.05 * float(shift.max()), (float(error.max()), float(shift.max()))
    # read where the mean is instead of where the face is, the error would be many times larger
    naive = (neutral - backbone.sample(faces.identity, neutral[None])[0] - basis.mean)[interior]
    assert float(naive.norm(dim=1).max()) > 3 * float(error.max())


def test_a_backbone_model_trains_through_second_derivatives_and_needs_its_bases():
    """The eikonal and normal losses differentiate the SDF's gradient: the backbone's
    interpolation must pass that on, to the weights and to the codes (fitting)."""
    basis = sheet_basis(id_dim=10, exp_dim=10)
    model = perturb(ImFace(ModelConfig.tiny(linear_backbone=True)))
    codes = Codes(torch.zeros(2, 10), torch.zeros(2, 10), torch.tensor([False, True]))
    try:
        model.prepare(codes)
        raise AssertionError("a backbone model without bases must refuse to run")
    except ValueError as error:
        assert "bases" in str(error)
    model.attach_basis(basis)
    z_id = (0.1 * torch.randn(2, 10)).requires_grad_(True)
    codes = Codes(z_id, 0.1 * torch.randn(2, 10), torch.tensor([False, True]))
    points = torch.cat([0.6 * torch.rand(64, 2) - 0.3, 0.3 + 0.05 * torch.randn(64, 1)], 1)  # near the sheet
    points.requires_grad_(True)
    index = torch.arange(2).repeat_interleave(32)
    out = model(points, index, codes)
    grad = spatial_gradient(out.sdf, points)
    ((grad.norm(dim=-1) - 1) ** 2).mean().backward()
    assert z_id.grad is not None and float(z_id.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in model.template_field.parameters())
    # the backbone moves the chain: the same weights without it give another template point
    plain = ImFace(ModelConfig.tiny())
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        a = model(points, index, codes).template
        b = plain(points, index, codes).template
    assert float((a - b).abs().max()) > 1e-3


def test_a_backbone_checkpoint_rebuilds_its_backbone_and_one_without_bases_is_refused(tmp_path):
    import pytest

    from imface.errors import CheckpointError
    from imface.io import load_checkpoint, save_checkpoint
    from imface.train.trainer import Dist, Trainer
    from imface.train.training_set import TrainingSet
    from tests.test_correspondence_training import write_registered_sphere_cache
    from tests.test_train import tiny_config

    root, _ = write_registered_sphere_cache(tmp_path / "cache", identities=3, expressions=2)
    for folder in root.glob("*/*_expr"):  # the spheres' "scans" are their registrations
        np.save(folder / "gt_vertices.npy", np.load(folder / "registered_vertices.npy"))
    cfg = tiny_config(epochs=1000, correspondence_points=32, code_space="registrations")
    cfg.model.linear_backbone = True
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, TrainingSet.open(root, test_identities=0, seed=0), tmp_path / "run", Dist())
    trainer.run(max_steps=3)
    ckpt = load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert ckpt.model.backbone is not None
    codes = Codes(ckpt.codes.z_id[:1], ckpt.codes.z_exp[:1])
    points = 0.4 * torch.randn(50, 3)
    trained = trainer.decoder.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(points, None, codes).sdf, trained(points, None, codes).sdf)

    save_checkpoint(tmp_path / "stripped.safetensors", ckpt.model, ckpt.codes)  # bases left out
    with pytest.raises(CheckpointError, match="registration bases"):
        load_checkpoint(tmp_path / "stripped.safetensors")


def test_the_linear_face_moves_with_the_point_as_the_exact_preimage_does():
    """Only the last fixed-point step is in the graph: the derivative of e along x must still
    follow the exact preimage's (central differences after 30 steps), or normals would be off."""
    basis = sheet_basis()
    backbone = LinearBackbone(basis)
    z_id, z_exp = unseen_codes(basis)
    faces = backbone.faces(z_id, z_exp)
    both = torch.cat([faces.identity, faces.expression], -1)
    x = basis.face(z_id[0], z_exp[0])[None, ::7].clone().requires_grad_(True)
    e = backbone.expression_displacement(faces, torch.tensor([0]), x)
    rows = [torch.autograd.grad(e[..., i].sum(), x, retain_graph=True)[0] for i in range(3)]
    jacobian = torch.stack(rows, -2)

    def exact(points):
        q = points
        for _ in range(30):
            moved = backbone.sample(both, q)
            q = points - moved[..., :3] - moved[..., 3:]
        return backbone.sample(both[..., 3:], q)

    h = 1e-3
    with torch.no_grad():
        steps = torch.eye(3) * h
        differences = torch.stack([(exact(x + s) - exact(x - s)) / (2 * h) for s in steps], -1)
    scale = float(differences.abs().max())
    assert scale > 0.05  # the expression really moves with x here
    assert float((jacobian - differences).abs().max()) < 0.15 * scale
