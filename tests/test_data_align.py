"""Alignment: synthetic scans in random poses and units, manual fallback, non-faces, huge meshes."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from imface.errors import MeshError
from imface.scan.align import Alignment, align_from_landmarks, align_scan
from imface.scan.load import load_scan
from imface.scan.template import template
from imface.testing import non_faces
from tests.data_fixtures import load_synth, model_frame, synth_corpus  # noqa: F401

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


# a real face scan nobody here made, beside the repository when it is checked out with its data
REAL_FACE = Path(__file__).resolve().parents[2] / "shared" / "real_scans" / "rvcg_humface.ply"


@pytest.mark.parametrize("which", ["synthetic", "real"])
def test_the_same_scan_in_any_pose_lands_at_the_same_placement(which, synth_corpus):  # noqa: F811
    # the fit rounds the aligned scan to 1 um and then sees bit-identical samples: the placement
    # must not depend on where the search started (a trimmed ICP cycled ~4 um around it on the
    # real scan)
    if which == "real" and not REAL_FACE.exists():
        pytest.skip("no real scans beside the repository")
    rng = np.random.default_rng(3)
    if which == "real":
        scan = load_scan(REAL_FACE, "mm")
        v, f, meta = scan.vertices, scan.faces, {"to_model": np.eye(4)}
    else:
        v, f, meta = load_synth(synth_corpus, "002/2_smile")
    placed = []
    for _ in range(3):
        posed, _, _, _, _, _ = _posed(v, meta, rng)
        placed.append(align_scan(posed, f).to_model(posed))
    for other in placed[1:]:
        assert np.abs(other - placed[0]).max() < 1e-6  # model units: 0.01 um


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


@pytest.mark.parametrize("shape", list(non_faces()))
def test_non_faces_are_refused_in_their_unit(shape):
    mesh = non_faces()[shape]
    with pytest.raises(MeshError, match="does not look like a face.*residual of [0-9.]+ mm.*by hand"):
        align_scan(mesh.vertices, mesh.faces, unit="mm")


@pytest.mark.parametrize("shape", ["sphere", "cube"])
def test_non_faces_are_refused_at_any_scale(shape):
    """No unit given: the scale search (free scale) must not make a face of them either."""
    mesh = non_faces()[shape]
    with pytest.raises(MeshError, match="does not look like a face"):
        align_scan(mesh.vertices * 0.37, mesh.faces)


def test_arbitrary_unit_is_recovered_from_the_face(synth_corpus):  # noqa: F811
    """A face in its own unit (37 mm per unit: no unit fits) is accepted at the face's scale."""
    v, f, meta = load_synth(synth_corpus, "002/1_neutral")
    posed, truth, _, k, r, shift = _posed(v, meta, np.random.default_rng(3), 30)
    mm_per_unit = 37.0
    al = align_scan(posed / k / mm_per_unit, f)
    s_true = mm_per_unit / 100.0  # model units (100 mm) per scan unit
    assert al.unit is None and abs(al.scale / s_true - 1) < 0.1, (al.scale, s_true)


@pytest.mark.xfail(
    strict=True,
    reason="known gap: synthetic scans now have eyeballs and the alignment template still has Anny's "
    "empty sockets; this cut, noisy, stair-stepped face misses the acceptance limit (RMS 5.3 > 5.0 mm). "
    "Rebuilding the template with eyeballs moved other poses out of tolerance; not yet re-tuned.",
)
def test_given_unit_is_kept_on_a_cut_noisy_face(synth_corpus):  # noqa: F811
    """Forehead and chin cut, noise and 3 mm stair steps (like CT skin): the given unit's scale
    stays (a free scale would drift) and the face is accepted."""
    v, f, meta = load_synth(synth_corpus, "001/2_smile")
    m = model_frame(v, meta)
    keep = np.all((m[f][:, :, 1] < 0.55) & (m[f][:, :, 1] > -0.75), axis=1)
    rng = np.random.default_rng(4)
    noisy = v + rng.normal(0, 0.3, v.shape)
    noisy[:, 1] = np.round(noisy[:, 1] / 3.0) * 3.0 + 0.4 * (noisy[:, 1] - np.round(noisy[:, 1] / 3.0) * 3.0)
    al = align_scan(noisy, f[keep], unit="mm")
    assert al.unit == "mm" and al.scale == pytest.approx(0.01)
    nose = al.to_model(np.asarray(meta["nose_tip"])[None])[0]
    assert np.linalg.norm(nose - [0, 0, 0.4]) < 0.04  # within 4 mm of the model's nose tip


def test_landmarks_start_the_alignment(synth_corpus, tmp_path):  # noqa: F811
    """5 or 7 landmarks in the scan frame (a file, JSON or text) replace the search."""
    from imface.scan.load import load_landmarks
    from imface.scan.template import LANDMARKS7_IBUG68

    v, f, meta = load_synth(synth_corpus, "002/2_smile")
    posed, truth, unit, k, r, shift = _posed(v, meta, np.random.default_rng(8), 170)
    lm = np.asarray(meta["landmarks68"]) @ r.T * k + shift
    (tmp_path / "lm.json").write_text(json.dumps({"landmarks": lm[list(LANDMARKS7_IBUG68)].tolist()}))
    np.savetxt(tmp_path / "lm.txt", lm[[36, 45, 30, 48, 54]], delimiter=", ")
    for name in ("lm.json", "lm.txt"):
        al = align_scan(posed, f, landmarks=load_landmarks(tmp_path / name))
        rot, nose, scale = errors(al, truth, np.asarray(meta["nose_tip"]) @ r.T * k + shift)
        assert al.unit == unit and rot < 3 and nose < 2 and scale < 1e-6
    (tmp_path / "four.txt").write_text("\n".join("1 2 3" for _ in range(4)))
    with pytest.raises(MeshError, match="four.txt: expected 5 or 7 points"):
        load_landmarks(tmp_path / "four.txt")


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


def test_face_evidence_weighs_the_figures_together():
    """An unusual face short on one figure (a long nose; a round, wide face) is still a face
    when the others are far inside; a smooth non-face that hugs the cheeks has no nose. Figures
    measured on wide-population adults and the non-face corpus (benchmarks/face_evidence.py)."""
    from imface.scan.align import FaceEvidence

    long_nose = FaceEvidence(residual_mm=1.94, inlier_fraction=0.966, nose_fraction=0.502)
    wide_face = FaceEvidence(residual_mm=5.02, inlier_fraction=0.56, nose_fraction=0.857)
    ellipsoid = FaceEvidence(residual_mm=3.59, inlier_fraction=0.76, nose_fraction=0.282)
    blob = FaceEvidence(residual_mm=4.07, inlier_fraction=0.67, nose_fraction=0.355)
    assert long_nose.is_face and wide_face.is_face
    assert not ellipsoid.is_face and not blob.is_face
    assert not FaceEvidence(residual_mm=1.0, inlier_fraction=0.45, nose_fraction=1.0).is_face
    free = FaceEvidence(residual_mm=1.94, inlier_fraction=0.966, nose_fraction=0.502, free_scale=True)
    assert not free.is_face  # a free scale is one more freedom to look like a face: stricter
