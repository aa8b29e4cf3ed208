"""Dense and narrow-band extraction on analytic SDFs with known surfaces."""

import math
import threading

import numpy as np
import pytest
import torch

from imface.extract import (
    BandCache,
    LatestValue,
    extract_dense,
    extract_narrow_band,
    refine,
)


def sphere(radius=0.5, center=(0.0, 0.0, 0.0)):
    return lambda p: (p - p.new_tensor(center)).norm(dim=-1) - radius


def torus(p, major=0.5, minor=0.2):
    q = torch.stack([torch.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2) - major, p[:, 2]], -1)
    return q.norm(dim=-1) - minor


def signed_volume(mesh):
    tri = mesh.vertices[mesh.faces].astype(np.float64)
    return np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0


def same_mesh(a, b, atol=1e-5):
    assert a.vertices.shape == b.vertices.shape and a.faces.shape == b.faces.shape
    np.testing.assert_allclose(np.sort(a.vertices, 0), np.sort(b.vertices, 0), atol=atol)


def test_dense_sphere_is_on_the_surface_and_outward():
    mesh = extract_dense(sphere(0.5), resolution=48, chunk=5000)
    radius = np.linalg.norm(mesh.vertices, axis=1)
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int64
    assert np.abs(radius - 0.5).max() < 2e-3
    assert signed_volume(mesh) == pytest.approx(4 / 3 * math.pi * 0.125, rel=0.02)


def test_dense_torus_known_surface():
    mesh = extract_dense(torus, resolution=48)
    p = torch.from_numpy(mesh.vertices)
    assert torus(p).abs().max() < 3e-3
    assert signed_volume(mesh) == pytest.approx(2 * math.pi**2 * 0.5 * 0.2**2, rel=0.03)


@pytest.mark.parametrize("fn", [sphere(0.45, (0.1, -0.05, 0.02)), torus])
def test_narrow_band_equals_dense(fn):
    dense = extract_dense(fn, resolution=65)
    band = extract_narrow_band(fn, resolution=65, coarse_resolution=17)
    same_mesh(dense, band.mesh)
    assert not band.reused
    assert band.fraction_evaluated < 0.5
    assert band.coarse_mesh is not None and 0 < band.coarse_mesh.num_vertices < dense.num_vertices


def test_narrow_band_fraction_shrinks_with_resolution():
    coarse = extract_narrow_band(sphere(0.5), resolution=65, coarse_resolution=17).fraction_evaluated
    fine = extract_narrow_band(sphere(0.5), resolution=129, coarse_resolution=33).fraction_evaluated
    assert fine < 0.6 * coarse


def test_band_reuse_small_step_matches_fresh_extraction():
    first = extract_narrow_band(sphere(0.5), resolution=65, coarse_resolution=17)
    moved = sphere(0.5, (0.01, 0.0, 0.0))
    again = extract_narrow_band(moved, resolution=65, coarse_resolution=17, previous=first)
    assert again.reused
    assert again.fraction_evaluated < first.fraction_evaluated
    same_mesh(again.mesh, extract_dense(moved, resolution=65))


def test_band_reuse_falls_back_when_surface_leaves_band():
    first = extract_narrow_band(sphere(0.5), resolution=65, coarse_resolution=17)
    far = sphere(0.8)  # tracking this would cost more than a fresh extraction
    again = extract_narrow_band(far, resolution=65, coarse_resolution=17, previous=first)
    assert not again.reused
    same_mesh(again.mesh, extract_dense(far, resolution=65))
    shifted = sphere(0.5, (0.2, 0.0, 0.0))  # tracked by growing, or recomputed: same mesh
    again = extract_narrow_band(shifted, resolution=65, coarse_resolution=17, previous=first)
    same_mesh(again.mesh, extract_dense(shifted, resolution=65))


def _fake_face_sdf(monkeypatch, fn, calls):
    def fake(model, codes, detail=True):
        def sdf(p):
            calls.append(p.shape[0])
            return fn(p)

        return sdf

    monkeypatch.setattr("imface.extract.stream.face_sdf", fake)


class _Model:
    template_landmarks = torch.zeros(5, 3)


def test_refine_yields_coarse_then_fine_and_reuses(monkeypatch):
    calls = []
    _fake_face_sdf(monkeypatch, sphere(0.5), calls)
    cache = BandCache()
    stages = list(refine(_Model(), None, resolution=33, coarse_resolution=9, cache=cache))
    assert [s for s, _ in stages] == ["coarse", "fine"]
    assert stages[0][1].num_vertices < stages[1][1].num_vertices
    again = list(refine(_Model(), None, resolution=33, coarse_resolution=9, cache=cache))
    assert [s for s, _ in again] == ["fine"]  # band reused: no coarse pass needed


def test_refine_stops_promptly_when_cancelled(monkeypatch):
    calls = []
    _fake_face_sdf(monkeypatch, sphere(0.5), calls)
    cancel = threading.Event()
    gen = refine(_Model(), None, resolution=65, coarse_resolution=17, cancel=cancel, chunk=500)
    stage, _ = next(gen)
    assert stage == "coarse"
    evaluated = len(calls)
    cancel.set()
    assert list(gen) == []
    assert len(calls) == evaluated  # no chunk ran after the cancel

    calls.clear()
    counter = iter(range(10**6))
    stop_after_three = lambda: next(counter) >= 3  # noqa: E731
    assert (
        list(
            refine(
                _Model(),
                None,
                resolution=65,
                coarse_resolution=17,
                cancel=stop_after_three,
                chunk=500,
            )
        )
        == []
    )
    assert len(calls) == 3


def test_latest_value_coalesces():
    slot = LatestValue()
    assert slot.take() is None
    for v in range(5):
        slot.put(v)
    assert slot.pending()
    assert slot.take() == 4 and slot.take() is None

    got = []
    done = threading.Event()

    def worker():
        while not done.is_set() or slot.pending():
            v = slot.wait(timeout=0.01)
            if v is not None:
                got.append(v)

    t = threading.Thread(target=worker)
    t.start()
    for v in range(1000):
        slot.put(v)
    done.set()
    t.join(5)
    assert got[-1] == 999 and got == sorted(got) and len(set(got)) == len(got)


def test_band_reuse_grows_where_the_surface_moved_most():
    """A bump larger than the shell on one side: the region grows there instead of falling back."""
    first = extract_narrow_band(sphere(0.5), resolution=65, coarse_resolution=17)

    def bumped(p):
        bump = torch.exp(-((p - p.new_tensor([0.5, 0.0, 0.0])) ** 2).sum(-1) / 0.02)
        return sphere(0.5)(p) - 0.06 * bump

    again = extract_narrow_band(bumped, resolution=65, coarse_resolution=17, previous=first)
    assert again.reused
    assert again.fraction_evaluated < first.fraction_evaluated
    same_mesh(again.mesh, extract_dense(bumped, resolution=65))


def test_largest_component_drops_floating_pieces():
    import trimesh

    from imface.extract import Mesh

    big = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    small = trimesh.creation.icosphere(subdivisions=1, radius=0.05)
    small.apply_translation([0.9, 0, 0])
    both = trimesh.util.concatenate([small, big])
    kept = Mesh(both.vertices, both.faces).largest_component()
    assert kept.num_vertices == len(big.vertices) and len(kept.faces) == len(big.faces)
    np.testing.assert_allclose(np.linalg.norm(kept.vertices, axis=1), 0.5, atol=1e-6)
