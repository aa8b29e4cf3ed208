"""The template face the alignment registers scans to: points and normals of the average neutral
Anny face (model frame, its visible front inside the unit sphere) and its 68 landmarks, stored in
resources/template_face.npz (``python -m imface.scan.template --build-template`` rebuilds it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from imface.errors import MeshError
from imface.scan.icp import apply_matrix
from imface.units import NOSE_MODEL

TEMPLATE_FILE = Path(__file__).resolve().parents[2] / "resources" / "template_face.npz"
# Above this model-frame height (15 mm below the nose tip) the face is nearly rigid under
# expressions: the final fit (and the synthetic corpus's frontal frame) uses only that part.
UPPER_Y = -0.15
NOSE = NOSE_MODEL
# iBUG-68 indices of the 7-point set: eye corners (right outer, right inner, left inner, left
# outer), nose tip, mouth corners (right, left). The 5-point set is BLEND_LANDMARK_IBUG68.
LANDMARKS7_IBUG68 = (36, 39, 42, 45, 30, 48, 54)


class Template:
    """Points and normals of the average face (model frame) and its 68 landmarks."""

    def __init__(self, path: Path = TEMPLATE_FILE):
        if not Path(path).exists():
            raise MeshError(
                f"{path}: the alignment template is missing (run "
                "python -m imface.scan.template --build-template)"
            )
        data = np.load(path)
        self.points = data["points"].astype(np.float64)
        self.normals = data["normals"].astype(np.float64)
        self.landmarks68 = data["landmarks68"].astype(np.float64)
        self.tree = cKDTree(self.points)
        self.centre = self.points.mean(0)
        self.radius = float(np.quantile(np.linalg.norm(self.points - self.centre, axis=1), 0.9))
        rng = np.random.default_rng(0)
        self.coarse = rng.permutation(len(self.points))[:400]
        self.fine = rng.permutation(len(self.points))[:3000]
        self.upper = self.fine[self.points[self.fine, 1] > UPPER_Y]
        self.nose = np.flatnonzero(np.linalg.norm(self.points - NOSE, axis=1) < 0.25)

    def region(self, p, upper=False):
        """Points where the template has surface: near its centre and in front of its back
        (`upper`: only above the upper lip, the part expressions hardly move)."""
        inside = (np.linalg.norm(p - self.centre, axis=1) < self.radius) & (p[:, 2] > -0.2)
        return inside & (p[:, 1] > UPPER_Y) if upper else inside

    @property
    def landmarks5(self):
        from imface.config import BLEND_LANDMARK_IBUG68

        return self.landmarks68[list(BLEND_LANDMARK_IBUG68)]


_TEMPLATE: Template | None = None


def template() -> Template:
    global _TEMPLATE
    if _TEMPLATE is None:
        _TEMPLATE = Template()
    return _TEMPLATE


def template_landmarks(count: int) -> np.ndarray:
    """Model-frame positions of the 5- or 7-point landmark set."""
    if count == 5:
        return template().landmarks5
    if count == 7:
        return template().landmarks68[list(LANDMARKS7_IBUG68)]
    raise MeshError(
        f"need 5 landmarks (outer eye corners, nose tip, mouth corners) or 7 (eye corners "
        f"outer/inner right then inner/outer left, nose tip, mouth corners), got {count}"
    )


def build_template(out: Path = TEMPLATE_FILE, n: int = 6000) -> None:
    """The average neutral Anny face, visible part inside the unit sphere, as points+normals."""
    from imface.corpus import anny_head
    from imface.corpus.synth import Generator
    from imface.samples.preprocess import _sample_triangles, visible_surface

    gen = Generator(subdivisions=2)
    mean = anny_head.Identity({k: 0.5 for k in gen.model.phenotype_labels}, {}, 0, 0.0)
    scan = gen.scan(mean, {})
    v = apply_matrix(scan.to_model, scan.vertices)
    lm = apply_matrix(scan.to_model, scan.landmarks68)
    v, f = visible_surface(v, scan.faces)
    pts, fidx = _sample_triangles(v, f, n, np.random.default_rng(0))
    tri = v[f[fidx]]
    nrm = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    nrm[nrm[:, 2] < 0] *= -1
    # The front of the face: the sides and ears inside the sphere vary most between scans.
    keep = (nrm[:, 2] > 0.2) & (np.linalg.norm(pts - NOSE, axis=1) < 0.95)
    np.savez_compressed(
        out,
        points=pts[keep].astype(np.float32),
        normals=nrm[keep].astype(np.float32),
        landmarks68=lm.astype(np.float32),
    )


if __name__ == "__main__":
    import sys

    if "--build-template" in sys.argv:
        build_template()
        print(f"wrote {TEMPLATE_FILE}")
