"""The ImFace network: warps, hyper nets, neutral bypass, gradients."""

import pytest
import torch

from imface.config import ModelConfig
from imface.model import Codes, ImFace, se3_apply, se3_matrix, spatial_gradient
from imface.model.layers import ScanGroups


def twist_matrix(twist):
    omega, v = twist[:3], twist[3:]
    m = torch.zeros(4, 4, dtype=twist.dtype)
    m[0, 1], m[0, 2], m[1, 2] = -omega[2], omega[1], -omega[0]
    m[1, 0], m[2, 0], m[2, 1] = omega[2], -omega[1], omega[0]
    m[:3, 3] = v
    return m


@pytest.mark.parametrize("angle", [0.0, 1e-9, 1e-5, 1e-3, 0.3, 1.5, 3.0, 3.1])
def test_se3_exponential_matches_matrix_exp(angle):
    gen = torch.Generator().manual_seed(int(angle * 1000) + 1)
    axis = torch.nn.functional.normalize(torch.randn(3, generator=gen, dtype=torch.float64), dim=0)
    twist = torch.cat([axis * angle, torch.randn(3, generator=gen, dtype=torch.float64)])
    expected = torch.linalg.matrix_exp(twist_matrix(twist))
    torch.testing.assert_close(se3_matrix(twist), expected, atol=1e-10, rtol=1e-10)
    points = torch.randn(7, 3, dtype=torch.float64, generator=gen)
    moved = se3_apply(twist.expand(7, 6), points)
    torch.testing.assert_close(moved, points @ expected[:3, :3].T + expected[:3, 3])


def test_se3_gradient_is_finite_at_zero_rotation():
    twist = torch.zeros(4, 6, dtype=torch.float64, requires_grad=True)
    se3_apply(twist, torch.randn(4, 3, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(twist.grad).all()


def random_codes(cfg, faces, neutral=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    detail = torch.randn(faces, cfg.detail_dim, generator=gen) if cfg.detail else None
    return Codes(
        torch.randn(faces, cfg.id_dim, generator=gen),
        torch.randn(faces, cfg.exp_dim, generator=gen),
        neutral,
        detail,
    )


@pytest.mark.parametrize("deformation", ["translation", "se3"])
def test_identity_warps_and_zero_template_at_init(deformation):
    cfg = ModelConfig.tiny(deformation=deformation, detail=True)
    model = ImFace(cfg)
    points = torch.rand(300, 3) * 2 - 1
    index = torch.arange(3).repeat_interleave(100)
    out = model(points, index, random_codes(cfg, 3))
    assert torch.equal(out.canonical, points)
    assert torch.equal(out.template, points)
    assert torch.count_nonzero(out.sdf) == 0
    assert torch.count_nonzero(out.detail) == 0
    assert torch.allclose(out.neutral_landmarks, model.template_landmarks.expand(3, 5, 3))


def perturb(model, scale=0.3, seed=0):
    """Give every parameter random values so warps, landmarks and SDF are all non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale / max(p.shape[-1], 1) ** 0.5)
    return model


def test_different_codes_generate_different_weights():
    cfg = ModelConfig.tiny()
    model = ImFace(cfg)
    codes = random_codes(cfg, 2)
    layers = model.id_field.generate(codes.z_id)
    for weight, _ in layers[:-1]:  # the last layer is zero for every code at init
        assert not torch.allclose(weight[0], weight[1])
    again = model.id_field.generate(codes.z_id[[1, 0]])
    torch.testing.assert_close(again[0][0][0], layers[0][0][1])


def test_split_codes_give_each_local_net_its_own_slice():
    cfg = ModelConfig.tiny(split_codes=True)
    field = ImFace(cfg).id_field
    code = torch.zeros(1, cfg.id_dim)
    base = field.generate(code)[0][0]
    code[0, 0] = 1.0  # first slice only -> only local net 0 changes
    changed = field.generate(code)[0][0]
    assert not torch.allclose(changed[0, 0], base[0, 0])
    torch.testing.assert_close(changed[0, 1:], base[0, 1:])


def test_neutral_faces_bypass_expnet():
    cfg = ModelConfig.tiny()
    model = perturb(ImFace(cfg))
    points = torch.rand(200, 3) * 2 - 1
    index = torch.arange(2).repeat_interleave(100)
    codes = random_codes(cfg, 2, neutral=torch.tensor([True, False]))
    out = model(points, index, codes, neutral_displacement=True)
    assert torch.equal(out.canonical[:100], points[:100])
    assert not torch.allclose(out.canonical[100:], points[100:])
    # the expression code of a neutral face changes nothing
    codes.z_exp[0] += 5.0
    again = model(points, index, codes)
    torch.testing.assert_close(again.sdf[:100], out.sdf[:100])
    assert out.neutral_displacement[:100].abs().sum() > 0  # evaluated for the suppression loss
    assert torch.count_nonzero(out.neutral_displacement[100:]) == 0


def test_point_order_and_grouping_do_not_change_results():
    # float64: perturbed SIRENs amplify float32 rounding of differently shaped matmuls
    cfg = ModelConfig.tiny(deformation="se3")
    model = perturb(ImFace(cfg)).double()
    codes = random_codes(cfg, 3, neutral=torch.tensor([False, True, False]))
    codes = Codes(codes.z_id.double(), codes.z_exp.double(), codes.neutral)
    points = torch.rand(90, 3, dtype=torch.float64) * 2 - 1
    index = torch.tensor([0] * 40 + [1] * 20 + [2] * 30)
    reference = model(points, index, codes).sdf
    perm = torch.randperm(90, generator=torch.Generator().manual_seed(3))
    shuffled = model(points[perm], index[perm], codes).sdf
    torch.testing.assert_close(shuffled, reference[perm])
    # one face alone gives the same values as inside a batch
    alone = model(points[:40], None, Codes(codes.z_id[0], codes.z_exp[0])).sdf
    torch.testing.assert_close(alone, reference[:40])


def test_scan_groups_round_trip():
    index = torch.tensor([2, 0, 2, 1, 0, 2])
    groups = ScanGroups.from_index(index, 3)
    values = torch.arange(6.0)[:, None]
    assert groups.pad(values).shape == (3, 3, 1)
    torch.testing.assert_close(groups.unpad(groups.pad(values)), values)
    with pytest.raises(IndexError):
        ScanGroups.from_index(torch.tensor([0, 3]), 3)


def test_gradients_reach_codes_and_every_weight():
    cfg = ModelConfig.tiny(detail=True, deformation="se3")
    model = ImFace(cfg)
    codes = random_codes(cfg, 2, neutral=torch.tensor([False, True]))
    for tensor in (codes.z_id, codes.z_exp, codes.z_detail):
        tensor.requires_grad_(True)
    points = (torch.rand(100, 3) * 2 - 1).requires_grad_(True)
    index = torch.arange(2).repeat_interleave(50)
    optimizer = torch.optim.Adam(list(model.parameters()), lr=1e-3)

    def loss_fn():
        out = model(points, index, codes)
        normals = spatial_gradient(out.sdf, points, create_graph=True)
        return ((out.sdf - 0.1) ** 2).mean() + ((normals.norm(dim=-1) - 1) ** 2).mean()

    # zero-initialised last layers block gradients until they move: two steps open every path
    for _ in range(2):
        loss_fn().backward()
        optimizer.step()
        optimizer.zero_grad()
    for tensor in (codes.z_id, codes.z_exp, codes.z_detail):
        tensor.grad = None
    loss_fn().backward()
    for tensor in (codes.z_id, codes.z_exp, codes.z_detail):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
    silent = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    # eta (expression landmarks) is trained by the landmark loss, not by the SDF alone
    assert all(n.startswith("exp_landmark_net") for n in silent if "landmark" in n), silent
    assert not [n for n in silent if "landmark" not in n], silent


def test_paper_preset_sizes():
    cfg = ModelConfig.paper()
    assert (cfg.id_dim, cfg.exp_dim, cfg.siren_width, cfg.siren_hidden_layers) == (128, 128, 128, 3)
    assert cfg.hyper_hidden == (128, 128)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda():
    cfg = ModelConfig.tiny()
    model = perturb(ImFace(cfg)).cuda()
    codes = random_codes(cfg, 2)
    codes = Codes(codes.z_id.cuda(), codes.z_exp.cuda())
    points = torch.rand(64, 3, device="cuda")
    out = model(points, torch.arange(2, device="cuda").repeat_interleave(32), codes)
    assert out.sdf.device.type == "cuda"
