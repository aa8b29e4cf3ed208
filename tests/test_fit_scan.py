"""Fitting whole scans: pose-independent samples, point clouds, honest failure (toy network)."""

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from imface.config import FitConfig
from imface.errors import MeshError
from imface.fit.samples import scan_samples
from imface.fit.scan import FitFailed, fit_scan
from imface.scan.align import Alignment
from imface.scan.load import Scan
from tests.data_fixtures import load_synth, model_frame, synth_corpus  # noqa: F401


@pytest.fixture(scope="module")
def checkpoint(face_model, tmp_path_factory):
    from imface.io import TrainedCodes, load_checkpoint, save_checkpoint

    cfg = face_model.config
    gen = torch.Generator().manual_seed(0)
    codes = TrainedCodes(
        z_id=torch.randn(3, cfg.id_dim, generator=gen) * 0.05,
        z_exp=torch.randn(3, cfg.exp_dim, generator=gen) * 0.05,
        identity_labels=["001", "002", "003"],
        expression_labels=["1_neutral", "2_smile", "3_mouth_stretch"],
    )
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors", face_model, codes, {"step": 1})
    return load_checkpoint(path)


def test_samples_do_not_depend_on_pose_or_unit(synth_corpus):  # noqa: F811
    """The same scan placed through another pose and unit (equal up to float rounding) gives the
    same samples and the same batches: the fit then gives the same answer."""
    v, f, meta = load_synth(synth_corpus, "001/1_neutral")
    m = model_frame(v, meta)
    r = Rotation.from_euler("xyz", [20, -10, 35], degrees=True).as_matrix()
    other = ((m @ r.T * 1e-3 + 0.3) - 0.3) / 1e-3 @ r  # there and back: rounding differs
    a, b = scan_samples(m, f), scan_samples(other, f)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-4), key
    assert torch.equal(a["surface_hash"], b["surface_hash"])


def test_a_triangle_leaving_the_crop_changes_only_its_own_samples(synth_corpus):  # noqa: F811
    # another pose's alignment moves a triangle or two across the crop's border; a draw over
    # the triangle list then changed every sample (and the fit's answer)
    v, f, meta = load_synth(synth_corpus, "001/1_neutral")
    m = model_frame(v, meta)
    front = np.flatnonzero(np.linalg.norm(m[f].mean(1), axis=1) < 0.5)  # well inside the crop
    a = scan_samples(m, f)["surface_points"].numpy()
    cut = f.copy()
    cut[front[len(front) // 2]] = np.argmax(np.linalg.norm(m, axis=1))  # now outside the crop
    b = scan_samples(m, cut)["surface_points"].numpy()
    moved = cKDTree(b).query(a)[0] > 1e-6
    assert moved.sum() <= 10, moved.sum()


def test_point_cloud_samples_follow_the_surface(synth_corpus):  # noqa: F811
    v, f, meta = load_synth(synth_corpus, "002/1_neutral")
    m = model_frame(v, meta)
    front = m[m[:, 2] > 0.0]  # a single-view (front-only) cloud
    s = scan_samples(front, None)
    pts = s["surface_points"].numpy()
    d, _ = cKDTree(m).query(pts)
    assert np.median(d) < 0.01 and len(pts) > 1000  # within 1 mm of the scan's vertices
    assert (s["surface_normals"][:, 2] > 0).float().mean() > 0.99  # facing the viewer
    with pytest.raises(MeshError, match="needs >= 1000"):
        scan_samples(front[:: len(front) // 500], None)


def _own_face(checkpoint):
    from imface.extract import face_mesh
    from imface.model import Codes

    codes = Codes(checkpoint.stats["id"].mean, checkpoint.stats["exp"].mean)
    mesh = face_mesh(checkpoint.model, codes, resolution=48)
    return Scan(mesh.vertices, mesh.faces, "m", "own.ply")


def test_a_good_fit_passes_and_a_far_one_is_refused(checkpoint):
    scan = _own_face(checkpoint)
    placed = Alignment(np.eye(4), 1.0, 0.0)
    cfg = FitConfig(iterations=10, points_per_step=512)
    good = fit_scan(checkpoint, scan, cfg, resolution=32, alignment=placed)
    assert good.report["ok"] and good.report["scan_to_fit_median_mm"] < 1.0
    away = np.eye(4)
    away[:3, 3] = [0.0, 0.1, 0.25]  # 27 mm off: no code of this model reaches it
    with pytest.raises(FitFailed, match="own.ply: the fit stays far from the scan.*restarts") as failure:
        fit_scan(checkpoint, scan, cfg, resolution=32, alignment=Alignment(away, 1.0, 0.0))
    assert failure.value.report["restarts"] > 1 and not failure.value.report["ok"]
    flagged = fit_scan(
        checkpoint, scan, cfg, resolution=32, alignment=Alignment(away, 1.0, 0.0), on_poor_fit="flag"
    )
    assert not flagged.report["ok"] and "far from the scan" in flagged.report["warning"]


def test_a_scan_scored_against_itself_is_near_zero(synth_corpus):  # noqa: F811
    """The fit report scores at the protocol's density (150 k points a surface): a surface
    scored against its own scan sits near 0 mm. The fit's 30 k training samples as the target
    put a sampling floor under every figure, and the fitted surface a front scan cannot show
    (behind the eyeballs, inside the mouth) counted as error."""
    from imface.fit.samples import scan_truth
    from imface.fit.scan import surface_scores

    v, f, meta = load_synth(synth_corpus, "001/1_neutral")
    m = model_frame(v, meta)
    scores = surface_scores(m, f, scan_truth(m, f))
    assert scores["on_scan"]["chamfer_mm"] < 0.2, scores["on_scan"]
    assert scores["on_scan"]["fscore_1mm"] > 99.0, scores["on_scan"]
