"""Synthetic corpus: layout, determinism, landmarks, procedural detail."""

import json

import numpy as np

from imface.corpus import anny_head
from imface.corpus.detail import displacement_mm
from tests.data_fixtures import EXPRESSIONS, load_synth, model_frame, synth_corpus  # noqa: F401


def test_layout_and_metadata(synth_corpus):  # noqa: F811
    info = json.loads((synth_corpus / "corpus.json").read_text())
    assert info["scans"] == 2 * (len(EXPRESSIONS) + 1)
    assert (synth_corpus / "anny_faces.npy").exists()
    for ident in ("001", "002"):
        names = sorted(p.stem for p in (synth_corpus / ident).glob("*.ply"))
        assert names == sorted([*EXPRESSIONS, "21_random"])
    v, f, meta = load_synth(synth_corpus, "001/1_neutral")
    assert meta["neutral"] and meta["identity"] == "001" and meta["unit"] == "mm"
    assert np.asarray(meta["landmarks68"]).shape == (68, 3)
    reg = np.load(synth_corpus / "001/1_neutral.reg.npy")
    assert reg.shape == (4200, 3)
    assert not load_synth(synth_corpus, "001/2_smile")[2]["neutral"]
    # the nose tip goes to (0, 0, 0.4); the face lies in the unit sphere around the origin
    t = np.asarray(meta["to_model"])
    assert np.allclose(np.asarray(meta["nose_tip"]) @ t[:3, :3].T + t[:3, 3], [0, 0, 0.4], atol=1e-6)
    vm = model_frame(v, meta)
    assert vm[:, 2].max() < 0.45 and np.linalg.norm(vm, axis=1).min() < 1.0


def test_landmarks_match_template_and_are_symmetric(synth_corpus):  # noqa: F811
    from imface.scan.template import template

    idx = anny_head.load_landmarks().indices
    assert len(idx) == 68 and len(set(idx.tolist())) == 68
    _, _, meta = load_synth(synth_corpus, "002/1_neutral")
    t = np.asarray(meta["to_model"])
    lm = np.asarray(meta["landmarks68"]) @ t[:3, :3].T + t[:3, 3]
    # a different person, but close to the average face's landmarks (the contour varies most)
    err = np.linalg.norm(lm - template().landmarks68, axis=1)
    assert np.median(err) < 0.08 and err.max() < 0.3 and err[30] < 0.03
    tl = template().landmarks68
    assert tl[36, 0] < 0 < tl[45, 0] and tl[48, 0] < 0 < tl[54, 0]  # subject's right is -x
    assert np.allclose(tl[36] * [-1, 1, 1], tl[45], atol=0.01)
    assert tl[8, 1] < tl[57, 1] < tl[51, 1] < tl[33, 1] < tl[30, 1] < tl[27, 1] < tl[21, 1]


def test_deterministic_for_a_seed(tmp_path, synth_corpus):  # noqa: F811
    from imface.corpus.synth import Recipe, write_corpus

    write_corpus(
        tmp_path / "a", 1, Recipe(seed=3, extra=0, only=("2_smile",), population="moderate"), progress=False
    )
    write_corpus(
        tmp_path / "b", 1, Recipe(seed=4, extra=0, only=("2_smile",), population="moderate"), progress=False
    )
    same = (tmp_path / "a/001/2_smile.ply").read_bytes()
    assert same == (synth_corpus / "001/2_smile.ply").read_bytes()
    assert same != (tmp_path / "b/001/2_smile.ply").read_bytes()
    # a corpus started at person 2 holds the same person 2: it extends the first corpus
    write_corpus(
        tmp_path / "c",
        1,
        Recipe(seed=3, extra=0, only=("2_smile",), population="moderate"),
        first=1,
        progress=False,
    )
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if p.is_dir()) == ["002"]
    assert (tmp_path / "c/002/2_smile.ply").read_bytes() == (synth_corpus / "002/2_smile.ply").read_bytes()


def test_expression_folds_follow_the_actions():
    gen_lm = {i: np.zeros(3) for i in range(68)}
    gen_lm.update(
        {
            19: np.array([-20, 40, -10.0]),
            24: np.array([20, 40, -10.0]),
            21: np.array([-8, 35, -5.0]),
            22: np.array([8, 35, -5.0]),
            36: np.array([-45, 30, -30.0]),
            45: np.array([45, 30, -30.0]),
            31: np.array([-12, -5, -15.0]),
            35: np.array([12, -5, -15.0]),
            48: np.array([-25, -35, -15.0]),
            54: np.array([25, -35, -15.0]),
        }
    )
    forehead = np.stack([np.zeros(200), np.linspace(50, 85, 200), np.full(200, -20.0)], 1)
    rest = displacement_mm(forehead, gen_lm, {}, 0.5, 0)
    raised = displacement_mm(forehead, gen_lm, {"browInnerUp": 1.0}, 0.5, 0)
    assert np.ptp(raised) > 2 * np.ptp(rest) > 0  # deeper lines when the brows go up
    fold = np.array([[-25.5, -20.5, -10.0]])  # mid-way along the nasolabial line
    assert (
        displacement_mm(fold, gen_lm, {"mouthSmileLeft": 1, "mouthSmileRight": 1}, 0.5, 0)
        < displacement_mm(fold, gen_lm, {}, 0.5, 0) - 0.3
    )


def test_scan_variants_have_noise_and_small_holes_only_when_asked():
    import trimesh

    from imface.corpus.synth import as_scanned

    sphere = trimesh.creation.icosphere(5, 80.0)  # mm
    v, f = sphere.vertices, sphere.faces
    same = as_scanned(v, f, np.random.default_rng(0), 0.0)
    assert same[0] is v and same[1] is f and same[2] is None
    noisy_v, holed_f, variant = as_scanned(v, f, np.random.default_rng(0), 1.0)
    assert variant is not None and len(noisy_v) == len(v)
    moved = np.abs(np.linalg.norm(noisy_v, axis=1) - 80.0)
    assert 0.02 < moved.mean() < 0.5  # light noise (mm), along the normals
    removed = len(f) - len(holed_f)
    assert 0 < removed < 0.02 * len(f)  # a few small holes, not a cut face
    again = as_scanned(v, f, np.random.default_rng(0), 1.0)
    assert np.array_equal(again[0], noisy_v) and np.array_equal(again[1], holed_f)
