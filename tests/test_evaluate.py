"""The PCA 3DMM baseline and the `eval` protocol (held-out people, ImFace vs PCA side by side)."""

import json

import numpy as np
import pytest
import torch
import trimesh

from imface.baseline import PCAModel, scan_region
from imface.cli import main
from imface.io import load_checkpoint
from tests.data_fixtures import synth_corpus  # noqa: F401
from tests.test_data_prepare import SMALL


def _heads(rng, n: int, basis, mean):
    return mean + np.einsum("nk,kvd->nvd", rng.normal(size=(n, len(basis))), basis)


def _smooth_basis(vertices, count: int, rng):
    """Low-frequency deformations of a sphere (head-like shape variation)."""
    return np.stack([np.sin(vertices @ rng.normal(size=(3, 3)) * 2) * 0.1 for _ in range(count)])


def test_pca_fit_recovers_a_new_face_from_its_cropped_region():
    rng = np.random.default_rng(0)
    sphere = trimesh.creation.icosphere(3, radius=0.8)
    mean, faces = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    basis = _smooth_basis(mean, 12, rng)
    heads = _heads(rng, 60, basis, mean)
    region = mean[:, 2] > 0.2  # the scans keep the face: the front of the head
    truth = _heads(rng, 1, basis, mean)[0]
    assert np.array_equal(scan_region(list(heads[:5]), [h[region] for h in heads[:5]]), region)

    def fit_error(pca):
        coefficients = torch.from_numpy(pca.fit(truth[region], iterations=300))
        fitted = pca.vertices(coefficients).detach().numpy()
        return np.linalg.norm(fitted[region] - truth[region], axis=1).mean()

    pca = PCAModel.build(heads, faces, components=12, region=region)
    assert region[pca.faces].all()
    error = fit_error(pca)
    assert error < 0.005  # within 0.5 mm where the scan has data
    # fitting the whole head to a cropped scan drags the back onto the face and misses
    assert fit_error(PCAModel.build(heads, faces, components=12)) > 10 * error


@pytest.fixture(scope="module")
def trained(synth_corpus, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("eval")
    cache, run = root / "cache", root / "run"
    assert main(["prepare", str(synth_corpus), "--out", str(cache), *SMALL]) == 0
    train = ["train", "--corpus", str(cache), "--out", str(run), "--preset", "tiny", "--test-identities", "1"]
    assert main([*train, "--max-steps", "20", "--points-per-scan", "256", "--scans-per-batch", "2"]) == 0
    return cache, run / "model.safetensors"


def test_eval_compares_imface_and_pca_on_people_the_model_never_saw(trained, tmp_path):
    cache, checkpoint = trained
    out = tmp_path / "eval.json"
    args = ["eval", "--checkpoint", str(checkpoint), "--corpus", str(cache), "--json", str(out)]
    assert main([*args, "--iterations", "5", "--resolution", "32", "--points", "2000"]) == 0
    summary = json.loads(out.read_text())
    trained_people = set(load_checkpoint(checkpoint).codes.identity_labels)
    assert summary["scans"] == len(summary["keys"]) > 0
    assert not {key.split("/")[0] for key in summary["keys"]} & trained_people
    for model in ("imface", "pca"):
        overall = summary["overall"][model]
        assert overall["chamfer_mm"] > 0 and 0 <= overall["fscore_1mm"] <= 100
        # the detail stage moves the fitted surface onto the scan: it can only get closer
        assert summary["overall_with_detail"][model]["chamfer_mm"] < overall["chamfer_mm"]
    assert "| ImFace" in out.with_suffix(".md").read_text()


def test_correspondence_error_is_reported_per_face_region():
    from imface.metrics import correspondence_error_by_region, face_regions

    landmarks = np.zeros((68, 3))
    landmarks[30] = [0, 0, 1]  # nose tip
    landmarks[48:68] = [0, -1, 0.5]  # mouth
    truth = np.array([[0, 0, 0.95], [0, -0.9, 0.5], [0, -1.1, 0.5]])
    regions = face_regions(truth, landmarks)
    assert list(regions) == ["nose", "mouth", "mouth"]
    predicted = truth + np.array([[0.01, 0, 0], [0, 0.03, 0], [0, 0.01, 0]])  # 1 mm, 3 mm, 1 mm
    errors = correspondence_error_by_region(predicted, truth, regions)
    assert errors["nose"] == pytest.approx(1.0) and errors["mouth"] == pytest.approx(2.0)
    assert errors["all"] == pytest.approx(5 / 3) and "eyes" not in errors


def test_transfer_onto_the_same_person_gives_back_their_own_fit(trained):
    """Every transfer protocol offsets B's neutral fit by what A's expression changed; with B = A
    the offsets must land exactly on A's own expression fit (a sign or a swapped fit shows)."""
    from imface.config import FitConfig
    from imface.evaluate import Evaluator
    from imface.samples.cache import Corpus

    cache, checkpoint = trained
    ckpt, corpus = load_checkpoint(checkpoint), Corpus.open(cache)
    train_keys, test_keys = corpus.split_for(ckpt.codes.identity_labels)
    records = {r["key"]: r for r in corpus.scans}
    neutral = next(k for k in test_keys if records[k]["neutral"])
    smile = next(k for k in test_keys if not records[k]["neutral"])
    ev = Evaluator(ckpt, corpus, test_keys, train_keys, FitConfig(iterations=5), resolution=32, points=2000)
    own = {key: ev.fit_scan(key) for key in (neutral, smile)}[smile]
    result = ev.transfer(smile, neutral, neutral, smile)
    assert result["imface_code_offset"] == pytest.approx(own["imface"]["chamfer_mm"], abs=1e-6)
    assert result["pca"] == pytest.approx(own["pca"]["chamfer_mm"], abs=1e-6)
    assert result["imface"] > 0 and result["imface_identity_held"] > 0
