"""The model that ships in resources/ is what every command and the editor open by default: it
must load, and it must be a face (in the model frame of ARCHITECTURE.md) that expressions move."""

import numpy as np
import pytest
import torch

from imface.extract import face_mesh
from imface.io import DEFAULT_CHECKPOINT, load_checkpoint

MM = 100.0  # 1 model unit = 100 mm

pytestmark = pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no shipped model in this checkout")


@pytest.fixture(scope="module")
def shipped():
    return load_checkpoint(DEFAULT_CHECKPOINT)


def _mesh(checkpoint, expression: int | None):
    codes = checkpoint.codes.face(0, expression)
    return face_mesh(checkpoint.model, codes, resolution=64)


def test_shipped_model_is_trained_on_many_people(shipped):
    assert len(shipped.codes.identity_labels) >= 10
    assert len(shipped.codes.expression_labels) >= 100
    assert "corpus" in shipped.meta and "/" not in shipped.meta["corpus"]  # no machine paths


def test_shipped_neutral_face_has_face_proportions(shipped):
    mesh = _mesh(shipped, None)
    v = mesh.vertices * MM
    width, height, _ = v.max(0) - v.min(0)
    assert 100 < width < 220 and 110 < height < 250  # mm: a face with forehead and chin
    # the nose tip sits 40 mm in front of the origin, looking +z
    assert 30 < v[:, 2].max() < 55
    assert mesh.num_vertices > 2000


def test_shipped_expression_moves_the_face(shipped):
    codes = shipped.codes
    own_smile = f"{codes.identity_labels[0]}/2_smile"
    smile = next(i for i, key in enumerate(codes.expression_keys) if key == own_smile)
    smiling = _mesh(shipped, smile)
    sdf = shipped.model.query(
        torch.from_numpy(smiling.vertices), shipped.model.prepare(shipped.codes.face(0, None))
    ).sdf.detach()
    moved_mm = np.abs(sdf.numpy()) * MM
    assert moved_mm.max() > 2.0  # a smile moves the mouth by millimetres
    assert np.median(moved_mm) < 1.5  # ... and leaves most of the face where it was
