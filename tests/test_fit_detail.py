"""The detail stage (imface/fit/refine.py): the fitted mesh follows the scan where the scan has
data, moves only along its normals, stays smooth under noise and invents nothing in holes."""

import numpy as np
import trimesh

from imface.fit.refine import DetailConfig, refine_to_scan

MM = 0.01  # model units per mm


def _sphere(radius: float, subdivisions: int = 5) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)


def _scan(radius: float, count: int, rng, noise_mm: float = 0.0, keep=None):
    """Points and normals of a sphere (the 'scan'), optionally noisy and with a region removed."""
    d = rng.normal(size=(count, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    if keep is not None:
        d = d[keep(d)]
    points = d * radius + rng.normal(scale=noise_mm * MM, size=d.shape)
    return points, d


def _radial_error_mm(vertices, radius) -> np.ndarray:
    return np.abs(np.linalg.norm(vertices, axis=1) - radius) / MM


def test_the_mesh_moves_onto_the_scan_along_its_normals():
    rng = np.random.default_rng(0)
    mesh = _sphere(0.5)
    points, normals = _scan(0.52, 40_000, rng)  # the scan is 2 mm outside the fitted surface
    detail = refine_to_scan(mesh.vertices, mesh.faces, points, normals)
    refined = detail.apply(mesh.vertices)
    assert np.median(_radial_error_mm(refined, 0.52)) < 0.1
    assert np.median(_radial_error_mm(mesh.vertices, 0.52)) > 1.9
    # along the normals only: no vertex slides over the surface (its template coordinates hold)
    sideways = np.cross(refined - mesh.vertices, detail.normals)
    assert np.abs(sideways).max() < 1e-9
    assert detail.supported.mean() > 0.99


def test_noise_is_smoothed_not_copied():
    rng = np.random.default_rng(1)
    mesh = _sphere(0.5)
    points, normals = _scan(0.51, 40_000, rng, noise_mm=0.5)
    refined = refine_to_scan(mesh.vertices, mesh.faces, points, normals).apply(mesh.vertices)
    assert np.mean(_radial_error_mm(refined, 0.51)) < 0.25  # half the noise's own mean deviation (0.4 mm)


def test_a_hole_in_the_scan_gets_no_invented_structure():
    rng = np.random.default_rng(2)
    mesh = _sphere(0.5)
    # a 40 degree cap is missing from the scan (an eye hole, a cut border)
    points, normals = _scan(0.52, 40_000, rng, keep=lambda d: d[:, 2] < np.cos(np.radians(40)))
    detail = refine_to_scan(mesh.vertices, mesh.faces, points, normals, DetailConfig())
    refined = detail.apply(mesh.vertices)
    direction = mesh.vertices / np.linalg.norm(mesh.vertices, axis=1, keepdims=True)
    hole = direction[:, 2] > np.cos(np.radians(30))
    assert not detail.supported[hole].any()
    radius_mm = np.linalg.norm(refined, axis=1) / MM
    # inside the hole the surface stays between the model (50 mm) and the scan around it (52 mm),
    # smooth: no spike, no dent
    assert radius_mm[hole].min() > 49.9 and radius_mm[hole].max() < 52.1
    offsets_mm = detail.offsets / MM
    edges = mesh.edges_unique
    assert np.abs(offsets_mm[edges[:, 0]] - offsets_mm[edges[:, 1]]).max() < 0.5


def test_far_or_back_facing_samples_are_ignored():
    rng = np.random.default_rng(3)
    mesh = _sphere(0.5)
    points, normals = _scan(0.5, 20_000, rng)
    far = points * 1.2  # 10 mm away: beyond the reach
    detail = refine_to_scan(mesh.vertices, mesh.faces, far, normals)
    assert not detail.supported.any()
    assert np.abs(detail.offsets).max() < 1e-9
    flipped = refine_to_scan(mesh.vertices, mesh.faces, points * 1.02, -normals)
    assert not flipped.supported.any()


def test_a_detail_map_puts_the_detail_on_another_mesh_of_the_same_template():
    """Offsets stored at template coordinates come back on a different mesh (another resolution,
    another pose of the face) at the same template points, and fade out far from every sample."""
    from imface.fit.refine import DetailMap, along_normals

    fine = _sphere(0.5, subdivisions=5)
    template = fine.vertices / 0.5  # the template coordinates of a sphere face: its directions
    bump = np.exp(-((template[:, 2] - 1.0) ** 2) / 0.02) * 3 * MM  # a 3 mm bump at the pole
    detail = DetailMap(template[template[:, 2] > -0.5], bump[template[:, 2] > -0.5])
    coarse = _sphere(0.8, subdivisions=4)  # another face with the same template, fewer vertices
    coarse_template = coarse.vertices / 0.8
    offsets = detail.lookup(coarse_template)
    expected = np.exp(-((coarse_template[:, 2] - 1.0) ** 2) / 0.02) * 3 * MM
    covered = coarse_template[:, 2] > -0.45
    assert np.abs(offsets - expected)[covered].max() < 0.15 * MM
    assert np.abs(offsets[coarse_template[:, 2] < -0.6]).max() == 0.0  # no sample there: no detail
    moved = along_normals(coarse.vertices, coarse.faces, offsets)
    assert np.allclose(np.linalg.norm(moved, axis=1), 0.8 + offsets, atol=1e-4)


def test_detail_files_round_trip_and_bad_ones_give_one_clear_line(tmp_path):
    import pytest
    from safetensors.numpy import save

    from imface.errors import UserError
    from imface.fit.refine import DETAIL_FORMAT, DetailMap

    rng = np.random.default_rng(3)
    detail = DetailMap(rng.normal(size=(50, 3)) * 0.3, rng.normal(size=50) * MM, "scan.ply")
    back = DetailMap.load(detail.save(tmp_path / "d.detail.safetensors"))
    assert np.array_equal(back.template, detail.template) and np.array_equal(back.offsets, detail.offsets)
    assert back.source == "scan.ply"

    def written(name, template, offsets, fmt=DETAIL_FORMAT):
        path = tmp_path / name
        tensors = {"template": np.asarray(template, np.float32), "offsets": np.asarray(offsets, np.float32)}
        path.write_bytes(save(tensors, metadata={"format": fmt, "detail": "{}"}))
        return path

    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 5)
    cases = {
        tmp_path / "junk.safetensors": "not a detail file",
        written(
            "albedo.safetensors", detail.template, detail.offsets, "imface-albedo/1"
        ): "not a detail file",
        written("far.safetensors", detail.template, detail.offsets * 0 + 0.5): "within 8 mm",
        written("nan.safetensors", detail.template * np.nan, detail.offsets): "finite template",
        written("short.safetensors", detail.template, detail.offsets[:10]): "like the template",
        tmp_path / "missing.safetensors": "cannot read",
    }
    for path, message in cases.items():
        with pytest.raises(UserError, match=message):
            DetailMap.load(path)
