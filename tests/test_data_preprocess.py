"""ImFace preprocessing: crop, hidden surfaces, Delaunay sheet, SDF samples."""

import numpy as np
import trimesh

from imface.samples.preprocess import (
    Sheet,
    crop_sphere,
    delaunay_sheet,
    hidden_vertices,
    preprocess_mesh,
    sheet_sdf,
)
from tests.data_fixtures import load_synth, model_frame, synth_corpus  # noqa: F401


def _grid(n=20, z=0.0, size=1.0):
    g = np.linspace(-size, size, n)
    x, y = np.meshgrid(g, g)
    v = np.stack([x.ravel(), y.ravel(), np.full(n * n, z)], 1)
    idx = np.arange(n * n).reshape(n, n)
    a, b = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel()
    c, d = idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    return v, np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])


def test_hidden_surface_removal_drops_the_occluded_layer():
    v1, f1 = _grid(15, 0.0, 0.3)
    v2, f2 = _grid(15, 0.2, 0.5)  # a larger layer in front (+z) of the first
    v = np.vstack([v1, v2])
    f = np.vstack([f1, f2 + len(v1)])
    hidden = hidden_vertices(v, f)
    assert hidden[: len(v1)].all() and not hidden[len(v1) :].any()
    # the same answer as casting rays with trimesh
    ray = trimesh.Trimesh(v, f, process=False).ray.intersects_any(
        v + [0, 0, 1e-4], np.tile([0, 0, 1.0], (len(v), 1))
    )
    assert (ray == hidden).all()


def test_sheet_sdf_of_a_plane():
    sheet = delaunay_sheet(_grid(10, 0.0, 0.8)[0])
    q = np.array([[0.1, 0.2, 0.3], [0.0, -0.3, -0.25], [0.5, 0.1, 0.0]])
    sdf, grad = sheet_sdf(sheet, q)
    assert np.allclose(sdf, [0.3, -0.25, 0.0], atol=1e-9)
    assert np.allclose(grad[:2], [[0, 0, 1], [0, 0, 1]], atol=1e-9)  # normals face +z
    far = np.array([[1.5, 0.0, 0.0]])  # beside the sheet: distance to its edge
    assert np.isclose(sheet_sdf(sheet, far)[0][0], 0.7, atol=1e-9)
    assert np.allclose(sheet_sdf((sheet.vertices, sheet.faces), q)[0], sdf)


def test_preprocess_synthetic_scan(synth_corpus):  # noqa: F811
    v, f, meta = load_synth(synth_corpus, "001/3_mouth_stretch")  # open mouth: a cavity
    vm = model_frame(v, meta)
    s = preprocess_mesh(vm, f, n_surface=3000, n_space=800, rng=np.random.default_rng(0))
    assert s.surface_points.shape == (3000, 3) and s.space_sdf.shape == (800,)
    assert all(a.dtype == np.float32 for a in (s.surface_points, s.space_grad, s.space_sdf))
    assert np.linalg.norm(s.visible_vertices, axis=1).max() < 1.0
    assert np.linalg.norm(s.space_points, axis=1).max() <= 1.0
    assert np.allclose(np.linalg.norm(s.surface_normals, axis=1), 1, atol=1e-4)
    assert (s.surface_normals[:, 2] >= 0).all()
    assert np.allclose(np.linalg.norm(s.space_grad, axis=1), 1, atol=1e-4)
    # no visible vertex is occluded from the front any more, and the sheet is a height field
    assert not hidden_vertices(s.visible_vertices.astype(float), s.visible_faces).any()
    cv, cf = crop_sphere(vm, f)
    assert len(s.visible_vertices) < len(cv)  # something was hidden (mouth, nostrils)
    # SDF magnitudes agree with trimesh's exact distance to the sheet; signs with the height
    sheet = trimesh.Trimesh(s.sheet_vertices, s.sheet_faces, process=False)
    _, dist, _ = trimesh.proximity.closest_point(sheet, s.space_points[:150])
    near = dist < 0.05
    assert np.allclose(np.abs(s.space_sdf[:150])[near], dist[near], atol=1e-4)
    assert np.all(np.abs(s.space_sdf[:150]) >= dist - 1e-4)
    behind = s.space_points[:, 2] < -0.8  # far behind the face
    assert (s.space_sdf[behind] < 0).all()
    # surface points sit on the visible mesh
    sdf_surf, _ = sheet_sdf(Sheet(s.sheet_vertices.astype(float), s.sheet_faces), s.surface_points[:200])
    assert np.median(np.abs(sdf_surf)) < 1e-3
