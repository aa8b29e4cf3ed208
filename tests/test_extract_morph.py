"""Fixed-topology morphing: analytic warps with known inverses, non-convergence, and the network."""

import numpy as np
import pytest
import torch

from imface.config import ModelConfig
from imface.extract import MorphEngine, extract_narrow_band, face_sdf
from imface.model.imface import Codes, ImFace
from imface.testing import face_like_model, sample_codes


def sphere_mesh(radius=0.4):
    return extract_narrow_band(lambda p: p.norm(dim=-1) - radius, resolution=33, coarse_resolution=9).mesh


def tiny_model():
    torch.manual_seed(0)
    return ImFace(ModelConfig.tiny()).eval()


def codes(exp, z_id=None):
    cfg = ModelConfig.tiny()
    z_exp = torch.zeros(cfg.exp_dim)
    z_exp[: len(exp)] = torch.tensor(exp, dtype=torch.float32)
    return Codes(torch.zeros(cfg.id_dim) if z_id is None else z_id, z_exp)


def patch_expression(model, warp):
    """Replace ExpNet by an analytic warp of the code: warp(x (S, P, 3), z_exp (3,))."""
    model.expression_warp = lambda x, prep: warp(x, prep.codes.z_exp[0, :3])


def test_identity_warp_returns_input():
    model = tiny_model()  # fresh network: every warp is the identity, whatever the code
    mesh = sphere_mesh()
    engine = MorphEngine(model, mesh, codes([0.0]))
    for new in (codes([0.3, -0.2, 0.1]), codes([0.1], z_id=torch.full((10,), 0.2))):
        result = engine.morph(new)
        assert result.failed == 0 and result.converged.all()
        np.testing.assert_allclose(result.vertices, mesh.vertices, atol=1e-6)


def test_translation_warp_is_inverted_exactly():
    model = tiny_model()
    patch_expression(model, lambda x, z: x + z)  # E(p) = p + t(z)
    mesh = sphere_mesh()
    engine = MorphEngine(model, mesh, codes([0.1, 0.0, 0.0]))
    result = engine.morph(codes([0.0, 0.05, -0.02]))
    assert result.failed == 0
    expected = mesh.vertices + np.array([0.1, -0.05, 0.02], dtype=np.float32)
    np.testing.assert_allclose(result.vertices, expected, atol=2e-4)


def rotate_z(x, angle):
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([c * x[..., 0] - s * x[..., 1], s * x[..., 0] + c * x[..., 1], x[..., 2]], -1)


def test_nonlinear_warp_converges_with_warm_start():
    model = tiny_model()
    # E(p) = R_z(a |p|^2) p + t: a swirl, the Jacobian varies per point
    patch_expression(model, lambda x, z: rotate_z(x, z[0] * (x * x).sum(-1)) + z[1])
    mesh = sphere_mesh()
    base = codes([0.0, 0.0])
    engine = MorphEngine(model, mesh, base, tol=1e-5)
    target = torch.from_numpy(mesh.vertices)
    for step in (0.2, 0.4, 0.6):
        new = codes([step, 0.01])
        result = engine.morph(new)
        assert result.failed == 0
        warped = (
            rotate_z(
                torch.from_numpy(result.vertices),
                torch.tensor(step) * torch.from_numpy(result.vertices).pow(2).sum(-1),
            )
            + 0.01
        )
        assert (warped - target).norm(dim=-1).max() < 2e-5
    again = engine.morph(codes([0.6, 0.01]))  # warm start: already converged, one evaluation
    assert again.iterations == 1


def test_non_convergence_is_reported():
    model = tiny_model()
    # E(p) = (x, y, s tanh z): |E_z| < s, so targets with |tanh z| >= s_new are unreachable
    patch_expression(model, lambda x, z: torch.cat([x[..., :2], (1 - z[0]) * torch.tanh(x[..., 2:])], -1))
    mesh = sphere_mesh(0.4)
    engine = MorphEngine(model, mesh, codes([0.0]), max_iterations=30)
    result = engine.morph(codes([0.7]))  # s = 0.3 < tanh(0.4) = 0.38
    unreachable = np.tanh(np.abs(mesh.vertices[:, 2])) >= 0.3 + 1e-3
    assert result.failed > 0
    assert not result.converged[unreachable].any()
    reachable = np.tanh(np.abs(mesh.vertices[:, 2])) < 0.2
    assert result.converged[reachable].all()


@pytest.fixture(scope="module")
def face():
    model = face_like_model(ModelConfig.tiny(), steps=150)
    c0 = sample_codes(model.config, seed=0)
    mesh = extract_narrow_band(face_sdf(model, c0), resolution=49, coarse_resolution=13).mesh
    return model, c0, mesh


def test_network_morph_lands_on_new_surface(face):
    model, c0, mesh = face
    base_residual = face_sdf(model, c0)(torch.from_numpy(mesh.vertices)).abs().max().item()
    engine = MorphEngine(model, mesh, c0, check=True)
    gen = torch.Generator().manual_seed(5)
    steps = [
        Codes(c0.z_id, c0.z_exp + 0.3 * torch.randn(c0.z_exp.shape, generator=gen)),  # expression
        Codes(c0.z_id + 0.3 * torch.randn(c0.z_id.shape, generator=gen), c0.z_exp),  # identity
    ]
    for new in steps:
        result = engine.morph(new)
        stale = face_sdf(model, new)(torch.from_numpy(mesh.vertices)).abs().max().item()
        assert result.failed == 0
        assert stale > 4 * base_residual  # the codes really moved the surface
        assert result.max_sdf < 0.5 * stale
        assert result.max_sdf < 2 * base_residual + 1e-4  # ...and the vertices followed it
    assert result.checked


def test_morph_from_template_topology(face):
    """base_codes=None: the base mesh lies in template space (export-topology)."""
    model, c0, _ = face
    from imface.extract import template_sdf

    template = extract_narrow_band(template_sdf(model), resolution=49, coarse_resolution=13).mesh
    engine = MorphEngine(model, template, None, check=True)
    result = engine.morph(c0)
    assert result.failed == 0 and result.max_sdf < 5e-3
    np.testing.assert_array_equal(engine.mesh(result).faces, template.faces)


def test_preview_ticks_follow_a_drag_with_one_evaluation():
    model = tiny_model()
    patch_expression(model, lambda x, z: rotate_z(x, z[0] * (x * x).sum(-1)) + z[1])
    mesh = sphere_mesh()
    engine = MorphEngine(model, mesh, codes([0.0, 0.0]))
    target = torch.from_numpy(mesh.vertices)
    for k in range(1, 11):
        a = 0.03 * k
        result = engine.morph(codes([a, 0.0]), preview=True)
        assert result.iterations == 1 and result.preview and result.converged.all()
        x = torch.from_numpy(result.vertices)
        error = (rotate_z(x, torch.tensor(a) * x.pow(2).sum(-1)) - target).norm(dim=-1).max()
        assert error < 2e-4  # second order in the slider step, not accumulating
    final = engine.morph(codes([0.3, 0.0]))  # on release: verified solve
    assert final.failed == 0 and not final.preview


def _grid(n: int = 6, spacing: float = 0.01):
    """A flat n x n vertex grid of triangles (spacing in model units)."""
    ys, xs = np.mgrid[0:n, 0:n]
    vertices = np.stack([xs.ravel() * spacing, ys.ravel() * spacing, np.zeros(n * n)], 1).astype(np.float32)
    quads = [
        (r * n + c, r * n + c + 1, (r + 1) * n + c, (r + 1) * n + c + 1)
        for r in range(n - 1)
        for c in range(n - 1)
    ]
    faces = np.array([f for a, b, c, d in quads for f in ((a, b, c), (b, d, c))], np.int64)
    return vertices, faces


def test_a_spike_stretches_only_its_own_faces_and_hiding_them_leaves_a_sound_mesh():
    from imface.extract.repair import _stretched_vertices, check_mesh, stretched_faces, visible_part

    vertices, faces = _grid()
    spike = 14
    vertices[spike, 2] = 0.2  # 20 mm out of the sheet
    bound = 0.05
    assert not check_mesh(vertices, faces, bound, 10.0).sound
    hidden = stretched_faces(vertices, faces, bound)
    assert set(np.flatnonzero(hidden)) == set(np.flatnonzero((faces == spike).any(1)))
    flagged = _stretched_vertices(vertices, faces, bound)
    assert flagged[spike] and flagged.sum() == 1 + len(set(faces[hidden].ravel()) - {spike})
    drawn_vertices, drawn_faces = visible_part(vertices, faces, hidden)
    assert check_mesh(drawn_vertices, drawn_faces, bound, 10.0).sound
    assert len(drawn_faces) == len(faces) - hidden.sum() and spike_free(drawn_vertices)


def spike_free(vertices: np.ndarray) -> bool:
    return bool(np.abs(vertices[:, 2]).max() == 0.0)


def test_faces_along_the_crop_rim_may_be_hidden_beyond_the_interior_limit(face_session):
    """A drag that narrows the face leaves the crop rim's vertices with no surface to follow: their
    faces are hidden until the re-mesh whatever their number, while torn faces inside the face
    still count against MAX_HIDDEN_FACES."""
    from imface.extract.live import RIM_RADIUS
    from imface.extract.repair import MAX_HIDDEN_FACES, MORPH_RADIUS

    codes = face_session.mean_codes()
    base = face_session.extract(codes, 48)
    morpher = face_session.morpher(base, codes)
    radius = np.linalg.norm(base.vertices, axis=1)
    rim = radius > RIM_RADIUS
    assert morpher._rim_faces.mean() > MAX_HIDDEN_FACES  # more rim than the interior limit
    pushed = base.vertices.copy()
    pushed[rim] *= (1.05 * MORPH_RADIUS / radius[rim])[:, None]  # every rim vertex flung outside
    hidden = morpher._hideable(pushed)
    assert hidden is not None and bool(hidden[morpher._rim_faces].any())
    interior = np.flatnonzero(~rim)
    torn = base.vertices.copy()
    torn[interior[:: max(len(interior) // 200, 1)]] += 0.3  # spikes all over the face
    assert morpher._hideable(torn) is None
