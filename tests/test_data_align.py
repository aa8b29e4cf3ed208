"""Alignment: synthetic scans in random poses and units, manual fallback, non-faces, huge meshes."""

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from imface.errors import MeshError
from imface.scan.align import Alignment, align_from_landmarks, align_scan, template
from imface.scan.load import load_scan
from tests.data_fixtures import load_synth, synth_corpus  # noqa: F401

UNIT_PER_MM = {"m": 1e-3, "cm": 0.1, "mm": 1.0}


def _posed(v_mm, meta, rng, max_deg=40.0):
    """The scan under a random rotation (<= max_deg), translation and unit, and the true
    scan -> model transform."""
    axis = rng.normal(size=3)
    rot = Rotation.from_rotvec(np.radians(rng.uniform(0, max_deg)) * axis / np.linalg.norm(axis))
    unit = rng.choice(list(UNIT_PER_MM))
    k = UNIT_PER_MM[unit]
    shift = rng.uniform(-300, 300, 3) * k
    r = rot.as_matrix()
    posed = v_mm @ r.T * k + shift
    back = np.eye(4)
    back[:3, :3] = r.T / k
    back[:3, 3] = -r.T @ shift / k
    return posed, np.asarray(meta["to_model"]) @ back, unit, k, r, shift


def errors(al: Alignment, truth, nose_scan):
    s_true = np.cbrt(np.linalg.det(truth[:3, :3]))
    rot = np.degrees(Rotation.from_matrix(al.rotation @ (truth[:3, :3] / s_true).T).magnitude())
    nose = np.linalg.norm(al.to_model(nose_scan) - (truth[:3, :3] @ nose_scan + truth[:3, 3]))
    return rot, nose * 100.0, abs(al.scale / s_true - 1) * 100.0


def test_random_poses_and_units(synth_corpus):  # noqa: F811
    rng = np.random.default_rng(11)
    keys = ["001/1_neutral", "001/3_mouth_stretch", "002/2_smile", "002/21_random"]
    rows = []
    for key in keys:
        v, f, meta = load_synth(synth_corpus, key)
        for _ in range(2):
            posed, truth, unit, k, r, shift = _posed(v, meta, rng)
            al = align_scan(posed, f)  # no unit given: guessed from the size
            nose = np.asarray(meta["nose_tip"]) @ r.T * k + shift
            rows.append(errors(al, truth, nose))
            assert al.unit == unit
    rows = np.array(rows)
    print("rotation deg / nose mm / scale %: median", np.median(rows, 0), "max", rows.max(0))
    assert rows[:, 0].max() < 3.0 and rows[:, 1].max() < 2.0 and rows[:, 2].max() < 2.0


def test_point_cloud_and_back_to_scan_frame(synth_corpus):  # noqa: F811
    v, f, meta = load_synth(synth_corpus, "002/1_neutral")
    posed, truth, _, k, r, shift = _posed(v, meta, np.random.default_rng(5), 30)
    al = align_scan(posed[::3], None)  # a bare point cloud
    rot, nose, scale = errors(al, truth, np.asarray(meta["nose_tip"]) @ r.T * k + shift)
    assert rot < 3 and nose < 2 and scale < 2
    pts = posed[:50]
    assert np.allclose(al.to_scan(al.to_model(pts)), pts, atol=1e-9)
    assert np.allclose(al.inverse().to_model(al.to_model(pts)), pts, atol=1e-9)
    assert al.residual_mm < 3 and Alignment.from_dict(al.to_dict()).scale == al.scale


def test_manual_landmarks_recover_a_similarity():
    model5 = template().landmarks5
    r = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix()
    scan5 = (model5 - [0.1, 0.2, 0.3]) @ r * 37.0  # some other frame and unit
    al = align_from_landmarks(scan5)
    assert np.allclose(al.to_model(scan5), model5, atol=1e-9) and al.residual_mm < 1e-6
    assert np.isclose(al.scale, 1 / 37.0)
    with pytest.raises(MeshError, match="collinear"):
        align_from_landmarks(np.outer(np.arange(5), [1.0, 2.0, 3.0]))


@pytest.mark.parametrize("shape", ["sphere", "cube"])
def test_non_faces_are_refused(shape):
    mesh = (
        trimesh.creation.icosphere(4, radius=0.1)
        if shape == "sphere"
        else trimesh.creation.box([0.2, 0.2, 0.2]).subdivide().subdivide().subdivide()
    )
    with pytest.raises(MeshError, match="does not look like a face.*residual of [0-9.]+ mm"):
        align_scan(mesh.vertices, mesh.faces)


def _write_binary_ply(path, v, f):
    header = (
        f"ply\nformat binary_little_endian 1.0\nelement vertex {len(v)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    faces = np.empty(len(f), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    faces["n"], faces["i"] = 3, f
    with open(path, "wb") as fh:
        fh.write(header.encode())
        fh.write(v.astype("<f4").tobytes())
        fh.write(faces.tobytes())


@pytest.mark.slow
def test_three_million_vertices_load_and_align(tmp_path, synth_corpus):  # noqa: F811
    """A dense height-field scan (3 M vertices, metres) is decimated on load and aligned."""
    from scipy.interpolate import LinearNDInterpolator

    from imface.samples.preprocess import visible_surface

    v, f, meta = load_synth(synth_corpus, "001/1_neutral")
    t = np.asarray(meta["to_model"])
    vis, _ = visible_surface(v @ t[:3, :3].T + t[:3, 3], f)
    n = 1733  # 1733^2 = 3.0 M vertices
    g = np.linspace(-0.8, 0.8, n)
    x, y = np.meshgrid(g, g)
    z = LinearNDInterpolator(vis[:, :2], vis[:, 2])(x, y)
    z = np.where(np.isnan(z), np.nanmin(z), z)
    verts = np.stack([x, y, z], -1).reshape(-1, 3) / 10.0  # model units -> metres
    idx = np.arange(n * n).reshape(n, n)
    a, b = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel()
    c, d = idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    path = tmp_path / "dense.ply"
    _write_binary_ply(path, verts, faces)
    del faces
    scan = load_scan(path)
    assert scan.decimated_from == n * n and len(scan.vertices) <= 1_500_000
    al = align_scan(scan.vertices, scan.faces, path=str(path))
    assert scan.unit == "m" and abs(al.scale - 10.0) < 1e-6
    assert np.linalg.norm(al.to_model([0, 0, 0.04]) - [0, 0, 0.4]) < 0.02  # nose tip within 2 mm
