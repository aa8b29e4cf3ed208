"""The editor's document model and undo (no widgets)."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json

import numpy as np
import pytest

pytest.importorskip("PyQt6")

from app.document import SLIDER_RANGE, Document
from imface.errors import UserError
from imface.session import CodeSpace, FaceCodes


@pytest.fixture
def doc(qapp, face_session):
    return Document(face_session)


def test_slider_drag_is_one_undo_step(doc):
    start = doc.codes.copy()
    doc.begin_drag()
    for v in np.linspace(0.1, 2.0, 15):
        doc.set_slider("id", 0, float(v))
    doc.end_drag()
    assert doc.undo_stack.count() == 1
    assert doc.sliders("id")[0] == pytest.approx(2.0, abs=1e-4)
    doc.undo_stack.undo()
    assert doc.codes.equals(start)
    doc.undo_stack.redo()
    assert doc.sliders("id")[0] == pytest.approx(2.0, abs=1e-4)


def test_separate_drags_and_clicks_are_separate_steps(doc):
    for value in (0.5, 1.0):
        doc.begin_drag()
        doc.set_slider("id", 1, value)
        doc.set_slider("id", 1, value + 0.1)
        doc.end_drag()
    doc.set_slider("exp", 0, 0.3)  # keyboard step: no drag, own step
    doc.set_slider("exp", 0, 0.4)
    assert doc.undo_stack.count() == 4


def test_drag_emits_interactive_then_finished(doc, qtbot):
    seen = []
    doc.codesChanged.connect(seen.append)
    with qtbot.waitSignal(doc.interactionFinished):
        doc.begin_drag()
        doc.set_slider("id", 0, 1.0)
        doc.end_drag()
    assert seen == [True]
    doc.undo_stack.undo()
    assert seen == [True, False]
    doc.undo_stack.redo()  # Ctrl+Y after the drag: the final face (a fine mesh), not a live morph
    assert seen == [True, False, False]


def test_pca_sliders_round_trip(doc):
    doc.set_slider("id", 2, 1.5)
    doc.set_slider("id", 0, -0.7)
    s = doc.sliders("id")
    assert s[2] == pytest.approx(1.5, abs=1e-4) and s[0] == pytest.approx(-0.7, abs=1e-4)
    doc.raw_sliders = True
    doc.set_slider("id", 3, 2.0)
    assert doc.sliders("id")[3] == pytest.approx(2.0, abs=1e-4)


def test_raw_code_space_moves_one_dimension_by_its_std():
    sp = CodeSpace(
        np.zeros(4, np.float32), np.ones(4, np.float32), np.eye(4, dtype=np.float32), np.arange(1, 5.0)
    )
    z = sp.with_slider(np.zeros(4, np.float32), 2, 1.0, raw=True)
    assert z[2] == pytest.approx(3.0) and z[[0, 1, 3]].tolist() == [0, 0, 0]


def test_slider_values_clamp_to_the_range(doc):
    doc.set_slider("id", 0, 7.5)
    assert doc.sliders("id")[0] == pytest.approx(SLIDER_RANGE, abs=1e-4)
    for seed in range(20):
        doc.randomize(np.random.default_rng(seed))
        assert np.abs(doc.sliders("id")).max() <= SLIDER_RANGE + 1e-4


def test_expression_blend_random_mean_reset(doc):
    doc.set_expression("2_smile", 0.5)
    fm = doc.face_model
    half = 0.5 * (fm.exp_space.mean + fm.expression_codes["2_smile"])
    assert not doc.codes.neutral and np.allclose(doc.codes.z_exp, half, atol=1e-6)
    doc.set_expression("1_neutral", 1.0)
    assert doc.codes.neutral
    with pytest.raises(UserError):
        doc.set_expression("17_cheek_blowing", 1.0)
    doc.randomize(np.random.default_rng(1))
    assert np.abs(doc.codes.z_id).sum() > 0
    doc.mean_face()
    assert np.allclose(doc.codes.z_id, doc.face_model.id_space.mean)
    doc.reset()
    n = doc.undo_stack.count()
    for _ in range(n):
        doc.undo_stack.undo()
    assert doc.codes.equals(doc.face_model.mean_codes())


def test_interpolation_needs_two_faces(doc):
    with pytest.raises(UserError):
        doc.interpolate(0.5)
    doc.store_slot("A")
    doc.set_slider("id", 0, 2.0)
    doc.store_slot("B")
    doc.interpolate(0.5)
    assert doc.sliders("id")[0] == pytest.approx(1.0, abs=1e-4)


def test_presets_tied_to_checkpoint(doc, tmp_path):
    doc.set_slider("id", 0, 1.25)
    path = tmp_path / "p.json"
    doc.save_preset(path, "mine")
    data = json.loads(path.read_text())
    assert data["checkpoint_sha256"] == doc.face_model.sha256 and data["name"] == "mine"
    doc.reset()
    codes, same = doc.read_preset(path)
    assert same
    doc.load_preset_codes(codes, "mine")
    assert doc.sliders("id")[0] == pytest.approx(1.25, abs=1e-4)
    data["checkpoint_sha256"] = "other"
    path.write_text(json.dumps(data))
    assert doc.read_preset(path)[1] is False
    data["codes"]["z_id"] = [0.0] * 3
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="other code sizes"):
        doc.read_preset(path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable preset"):
        doc.read_preset(tmp_path / "bad.json")


def test_face_codes_json_round_trip():
    c = FaceCodes(np.arange(3, dtype=np.float32), np.ones(2, np.float32), True)
    assert FaceCodes.from_json(json.loads(json.dumps(c.to_json()))).equals(c)
