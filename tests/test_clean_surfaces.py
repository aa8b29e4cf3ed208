"""The clean-surface check finds floating pieces inside the model's region."""

import numpy as np
import trimesh

from imface.metrics import surface_defects


def _face_sheet():
    """A curved sheet standing in for a face, in the model frame (inside the unit sphere)."""
    sheet = trimesh.creation.icosphere(3, radius=0.6)
    front = sheet.vertices[:, 2] > 0
    keep = front[sheet.faces].all(axis=1)
    return trimesh.Trimesh(sheet.vertices, sheet.faces[keep])


def test_a_clean_face_is_one_piece():
    sheet = _face_sheet()
    d = surface_defects(sheet.vertices, sheet.faces)
    assert d.clean and d.components == 1 and d.stray_area_mm2 == 0.0
    assert d.main_area_mm2 > 1000


def test_a_planted_blob_is_found_and_measured():
    sheet = _face_sheet()
    blob = trimesh.creation.icosphere(2, radius=0.05)
    blob.apply_translation([0.7, 0.0, 0.3])  # beside the face, inside the 100 mm sphere
    mesh = trimesh.util.concatenate([sheet, blob])
    d = surface_defects(mesh.vertices, mesh.faces)
    assert not d.clean and d.components == 2
    np.testing.assert_allclose(d.stray_area_mm2, blob.area * 100.0**2, rtol=1e-6)


def test_pieces_outside_the_region_do_not_count():
    sheet = _face_sheet()
    far = trimesh.creation.icosphere(2, radius=0.05)
    far.apply_translation([0.0, 0.0, 1.5])
    mesh = trimesh.util.concatenate([sheet, far])
    assert surface_defects(mesh.vertices, mesh.faces).clean
