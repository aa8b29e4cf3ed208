"""Scan frame -> model frame: automatic alignment, landmark alignment, and the transform record.

The model frame: 1 unit = 100 mm, face looking +z, y up, nose tip at (0, 0, 0.4). Every
alignment is a similarity ``x_model = s R x_scan + t`` kept as a 4x4 matrix, so any result in the
model frame can be taken back to the scan's own frame and unit (``Alignment.to_scan``).

Automatic alignment (no landmarks): 600 rotations covering SO(3), taken relative to the scan's
principal axes (so the same starts, relative to the face, in any pose), each with one of the
scan's two most forward bumps on the template nose tip, run a short trimmed point-to-plane ICP
(batched, ``imface.scan.icp``) against the template face (``imface.scan.template``); up to 8
distinct placements among the best get a short refinement and the most face-like (the face
evidence below) is refined on the whole face, then on the upper face (above the upper lip),
which expressions hardly move, and the nose tip is snapped to (0, 0, 0.4).

Scale: the given unit is kept. Otherwise the unit guessed from the size is tried first and kept
when a face fits at it (a free scale would drift on cut or partial scans); when it does not,
scales from the scan's own size are searched with a free scale, snapped to a unit within 20 %.

Not a face: decided by ``FaceEvidence`` (the whole template matched *and* a nose where the
template has one, judged together), calibrated on real and synthetic faces and a non-face corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from imface.errors import MeshError
from imface.scan.icp import (
    apply_matrix,
    batched_icp,
    robust_polish,
    similarity,
    similarity_matrix,
    start_placements,
    trimmed_icp,
)
from imface.scan.load import guess_unit
from imface.scan.template import template, template_landmarks
from imface.units import MM_PER_UNIT, NOSE_MODEL, UNITS

NOSE = NOSE_MODEL
MODEL_UNIT_M = 0.1  # one model unit in metres


@dataclass
class Alignment:
    transform: np.ndarray  # (4, 4) similarity: scan frame -> model frame
    scale: float  # s (model units per scan unit)
    residual_mm: float  # RMS ICP residual of the matched template points, in mm
    inlier_fraction: float = 1.0  # template points matched within 5 mm
    unit: str | None = None  # the scan unit the scale came from (None: its own arbitrary unit)
    nose_fraction: float = 1.0  # template nose points matched within 4 mm

    @property
    def rotation(self) -> np.ndarray:
        return self.transform[:3, :3] / self.scale

    def inverse(self) -> Alignment:
        return Alignment(
            np.linalg.inv(self.transform),
            1.0 / self.scale,
            self.residual_mm,
            self.inlier_fraction,
            self.unit,
            self.nose_fraction,
        )

    def to_model(self, points) -> np.ndarray:
        return apply_matrix(self.transform, points)

    def to_scan(self, points) -> np.ndarray:
        return apply_matrix(np.linalg.inv(self.transform), points)

    def to_dict(self) -> dict:
        return {
            "transform": self.transform.tolist(),
            "scale": self.scale,
            "residual_mm": self.residual_mm,
            "inlier_fraction": self.inlier_fraction,
            "unit": self.unit,
            "nose_fraction": self.nose_fraction,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Alignment:
        return cls(
            np.asarray(d["transform"], float),
            float(d["scale"]),
            float(d["residual_mm"]),
            float(d.get("inlier_fraction", 1.0)),
            d.get("unit"),
            float(d.get("nose_fraction", 1.0)),
        )


def scan_points(vertices, faces, n=20_000, rng=None):
    """Evenly spread points of the scan: area-weighted surface samples keyed by triangle (the
    same points, moved, for the scan in any pose or unit), or a vertex subset."""
    rng = np.random.default_rng(0) if rng is None else rng
    v = np.asarray(vertices, dtype=np.float64)
    if faces is not None and len(faces):
        from imface.fit.samples import keyed_surface_samples

        return keyed_surface_samples(v, np.asarray(faces), np.arange(len(faces)), n)[0]
    if len(v) > n:
        v = v[rng.choice(len(v), n, replace=False)]
    return v


@dataclass
class FaceEvidence:
    """What tells a face from a non-face once the template is placed on it.

    A face has the template's whole surface under it (small trimmed RMS, most template points
    matched) *and* a nose where the template has one: spheres, ellipsoids, cylinders and blobs
    can hug the cheeks and forehead but have no nose; a cube's corner can pass for a nose but
    not for the cheeks around it. No single figure separates them: unusual people fall short on
    one (a long nose, a round face) while the others are far inside, so the decision is on the
    sum of the three (`score`), with each one only bounded loosely. Calibrated on 30 adults of
    the wide population, real scans (cut, noisy, stair-stepped CT skin) and a non-face corpus
    (`imface.testing.non_faces`; `benchmarks/face_evidence.py`): faces score >= 0.92, non-faces
    <= 0.69.
    """

    residual_mm: float  # trimmed RMS of the upper face, mm
    inlier_fraction: float  # template points within 5 mm of the scan
    nose_fraction: float  # template nose points (25 mm around the tip) within 4 mm
    free_scale: bool = False  # the scale was fitted too (one more freedom to look like a face)

    @property
    def min_score(self) -> float:
        return 0.9 if self.free_scale else 0.8

    @property
    def max_residual_mm(self) -> float:
        return 4.5 if self.free_scale else 6.0

    @property
    def min_inliers(self) -> float:
        return 0.6 if self.free_scale else 0.5

    @property
    def min_nose(self) -> float:
        return 0.55 if self.free_scale else 0.4

    @property
    def is_face(self) -> bool:
        return (
            self.score >= self.min_score
            and self.residual_mm <= self.max_residual_mm
            and self.inlier_fraction >= self.min_inliers
            and self.nose_fraction >= self.min_nose
        )

    @property
    def score(self) -> float:
        """Higher is more face-like: matched nose and template share, less the residual in cm."""
        return self.nose_fraction + self.inlier_fraction - 0.1 * self.residual_mm

    def describe(self) -> str:
        return (
            f"the template fits with an RMS residual of {self.residual_mm:.1f} mm, matches "
            f"{100 * self.inlier_fraction:.0f}% of it within 5 mm and {100 * self.nose_fraction:.0f}% "
            f"of its nose within 4 mm: face score {self.score:.2f} (need >= {self.min_score:.2f}, "
            f"with <= {self.max_residual_mm:.1f} mm, >= {100 * self.min_inliers:.0f}% and "
            f">= {100 * self.min_nose:.0f}%)"
        )


def face_evidence(tree_scan, m, rms, inliers, free_scale=False) -> FaceEvidence:
    """The evidence for the placement `m` (scan -> model) of the scan points in `tree_scan`."""
    tmpl = template()
    inv = np.linalg.inv(m)
    d, _ = tree_scan.query(apply_matrix(inv, tmpl.points[tmpl.nose]), workers=1)
    d_model = d * np.cbrt(np.linalg.det(m[:3, :3]))
    return FaceEvidence(rms * 100.0, inliers, float(np.mean(d_model < 0.04)), free_scale)


@dataclass
class _Placement:
    m: np.ndarray
    scale: float
    unit: str | None
    evidence: FaceEvidence


def _place(tree, pts, scale, unit, start=None, free=False) -> _Placement:
    """Search (or refine from `start`) the pose at a scale; `free` lets the scale adjust."""
    tmpl = template()
    if start is None:
        start = _search(tree, pts, scale, free)
    # the scale (when free) comes from the whole face: the upper face alone lets it drift
    m, _, _, _ = trimmed_icp(tree, pts, tmpl, tmpl.fine, start, 12 if free else 8, 0.2, free, plane=True)
    m, rms, inl, _ = trimmed_icp(tree, pts, tmpl, tmpl.upper, m, 10, 0.1, False, plane=True, upper=True)
    m = robust_polish(tree, pts, tmpl, robust_polish(tree, pts, tmpl, m, sigma=0.05))
    s = float(np.cbrt(np.linalg.det(m[:3, :3])))
    m = _snap_nose(m, pts)
    return _Placement(m, s if free else scale, unit, face_evidence(tree, m, rms, inl, free))


FINALISTS = 8  # distinct placements refined a little and judged by their face evidence
POOL = 60  # starts (best batched score first) looked through for them
SURVIVORS = 300  # of the 1,200 starts, those that run the whole batched ICP
DISTINCT = 0.1  # model units (10 mm): placements whose nose, centre or brow land farther apart
_PROBES = np.array([NOSE, [0.0, 0.0, 0.0], [0.0, 0.5, 0.2]])  # model frame


def _search(tree, pts, scale, free) -> np.ndarray:
    """The most face-like of the distinct placements the starts lead to. The short ICP's own
    score often prefers a wrong placement (a chin for a nose, a tilted face on an unusual
    person), so a few distinct finalists get a short refinement on the whole and the upper face
    and the face evidence (nose, matched template, residual) picks one."""
    tmpl = template()
    mats, score = batched_icp(tree, pts, tmpl, start_placements(pts, scale), iters=2)
    survivors = np.argsort(score)[:SURVIVORS]  # a bad start is bad after two steps already
    mats, score = batched_icp(tree, pts, tmpl, mats[survivors], iters=3)
    finalists: list[tuple[np.ndarray, np.ndarray]] = []
    seen: list[np.ndarray] = []  # where the starts already refined had landed (same fate)
    for k in np.argsort(score)[:POOL]:
        start_landed = apply_matrix(np.linalg.inv(mats[k]), _PROBES)
        if _near_any(start_landed, seen, scale, DISTINCT / 4):
            continue
        seen.append(start_landed)
        m, _, _, _ = trimmed_icp(tree, pts, tmpl, tmpl.coarse, mats[k], 12, 0.3, free, plane=True)
        landed = apply_matrix(np.linalg.inv(m), _PROBES)
        if _near_any(landed, [f[0] for f in finalists], scale, DISTINCT):
            continue
        finalists.append((landed, m))
        if len(finalists) == FINALISTS:
            break

    def evidence(m) -> FaceEvidence:
        m, _, _, _ = trimmed_icp(tree, pts, tmpl, tmpl.fine, m, 5, 0.2, free, plane=True)
        m, rms, inl, _ = trimmed_icp(tree, pts, tmpl, tmpl.upper, m, 5, 0.1, False, plane=True, upper=True)
        return face_evidence(tree, _snap_nose(m, pts), rms, inl, free)

    return max(finalists, key=lambda f: evidence(f[1]).score)[1]


def _near_any(landed, others, scale, tol) -> bool:
    """Whether probe points `landed` (scan frame) are within `tol` model units of any of `others`."""
    return any(np.linalg.norm(landed - other, axis=1).max() * scale < tol for other in others)


def _size_scales(pts) -> list[float]:
    """Scale hypotheses from the scan's own size: its RMS radius is 55-165 mm for anything
    from a face-only scan to a bust (1.45x apart, within the free-scale ICP's reach)."""
    radius = float(np.sqrt(np.mean(np.sum((pts - pts.mean(0)) ** 2, axis=1))))
    return [mm / MM_PER_UNIT / radius for mm in (55.0, 80.0, 115.0, 165.0)]


def _snap_unit(scale) -> str | None:
    """The file unit a free scale is (faces differ in size by ~15 %; units by >= 2.54x)."""
    for unit, metres in UNITS.items():
        if abs(scale / (metres / MODEL_UNIT_M) - 1) < 0.2:
            return unit
    return None


def align_scan(
    vertices,
    faces_or_none=None,
    unit: str | None = None,
    path: str = "",
    rng=None,
    check: bool = True,
    landmarks=None,
) -> Alignment:
    """Find the similarity taking a scan (any pose, any unit) to the model frame.

    unit: the scan's unit when known (its scale is then kept); otherwise the unit guessed from
    the size is tried first and kept when the face fits at it; only when it does not, scales
    from the scan's size are searched with a free scale, which is snapped to a unit when within
    20 % of one (else the scan is in its own arbitrary unit). landmarks: 5 or 7 points in the
    scan frame (see `align_from_landmarks`) that give the start instead of the search.
    """
    v = np.asarray(vertices, dtype=np.float64)
    where = f"{path}: " if path else ""
    if len(v) < 100 or not np.isfinite(v).all():
        raise MeshError(f"{where}not enough finite points to align")
    pts = scan_points(v, faces_or_none, rng=rng)
    tree = cKDTree(pts)
    given = unit is not None
    guess = unit or guess_unit(v)
    scale0 = UNITS[guess] / MODEL_UNIT_M
    if landmarks is not None:
        start = align_from_landmarks(landmarks)
        lm_unit = unit or _snap_unit(start.scale)
        if lm_unit is not None:
            start = align_from_landmarks(landmarks, scale=UNITS[lm_unit] / MODEL_UNIT_M)
        best = _place(tree, pts, start.scale, lm_unit, start=start.transform, free=lm_unit is None)
    else:
        best = _place(tree, pts, scale0, guess)
        if not given and not best.evidence.is_face:
            best = _back_to_unit(tree, pts, _search_scale(tree, pts, best), guess)
    e = best.evidence
    align = Alignment(best.m, best.scale, e.residual_mm, e.inlier_fraction, best.unit, e.nose_fraction)
    if check and not e.is_face:
        raise MeshError(
            f"{where}does not look like a face: {e.describe()}; give its unit (--unit) or "
            "align it by hand from 5 landmarks (--landmarks)"
        )
    return align


def _search_scale(tree, pts, best: _Placement) -> _Placement:
    """The guessed unit did not give a face: try scales from the scan's size, each refined
    with a free scale, and keep the most face-like (snapped to a unit when one is close)."""
    for scale in _size_scales(pts):
        p = _place(tree, pts, scale, None, free=True)
        unit = _snap_unit(p.scale)
        if unit is not None:
            scale = UNITS[unit] / MODEL_UNIT_M
            p = _place(tree, pts, scale, unit, start=_rescaled(p.m, scale))
        if p.evidence.score > best.evidence.score:
            best = p
        if best.evidence.is_face:
            break
    return best


def _back_to_unit(tree, pts, best: _Placement, guess: str) -> _Placement:
    """The scale search settled on no unit, near the unit the scan's size suggests: a person
    unlike the average face (or a start the rotation search missed) lets the free scale drift
    further than units are apart from faces. Placed again at that unit's scale from the pose
    the search found, it is kept when it is a face (arbitrary units stay for the rest)."""
    scale = UNITS[guess] / MODEL_UNIT_M
    if best.unit is not None or abs(best.scale / scale - 1) > 0.5:
        return best
    placed = _place(tree, pts, scale, guess, start=_rescaled(best.m, scale))
    return placed if placed.evidence.is_face else best


def _rescaled(m: np.ndarray, scale: float) -> np.ndarray:
    """The scan -> model similarity `m` with its scale replaced, the nose tip held in place."""
    current = float(np.cbrt(np.linalg.det(m[:3, :3])))
    nose_scan = np.linalg.solve(m[:3, :3], NOSE - m[:3, 3])
    out = m.copy()
    out[:3, :3] = m[:3, :3] * (scale / current)
    out[:3, 3] = NOSE - out[:3, :3] @ nose_scan
    return out


def nose_apex(points_model, guess=NOSE):
    """The nose tip (pronasale) of points in the model frame: the apex of a quadric fitted to
    the most forward points within 12 mm (x, y) of `guess`; None when there are too few."""
    pm = np.asarray(points_model, dtype=np.float64)
    near = np.linalg.norm(pm[:, :2] - guess[:2], axis=1) < 0.12
    near &= np.abs(pm[:, 2] - guess[2]) < 0.3
    if near.sum() < 20:
        return None
    p = pm[near]
    top = p[np.argmax(p[:, 2])]
    # the cap in front: points under the tip (columella, nostrils) share its (x, y)
    cap = p[(np.linalg.norm(p[:, :2] - top[:2], axis=1) < 0.06) & (p[:, 2] > top[2] - 0.04)]
    if len(cap) < 10:
        return top
    x, y = cap[:, 0] - top[0], cap[:, 1] - top[1]
    a = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], 1)
    c = np.linalg.lstsq(a, cap[:, 2], rcond=None)[0]
    h = np.array([[2 * c[3], c[4]], [c[4], 2 * c[5]]])
    if not np.all(np.linalg.eigvalsh(h) < 0):
        return top
    off = np.linalg.solve(h, -c[1:3])
    if np.linalg.norm(off) > 0.03:
        return top
    z = (
        c[0]
        + c[1] * off[0]
        + c[2] * off[1]
        + c[3] * off[0] ** 2
        + c[4] * off[0] * off[1]
        + c[5] * off[1] ** 2
    )
    return np.array([top[0] + off[0], top[1] + off[1], z])


def _snap_nose(m, pts):
    """Put the scan's own nose tip on (0, 0, 0.4): ICP fits the whole face, but noses differ
    in length between people by many millimetres."""
    tip = nose_apex(pts @ m[:3, :3].T + m[:3, 3])
    out = m.copy()
    if tip is not None:
        out[:3, 3] += NOSE - tip
    return out


def align_from_landmarks(scan_points5, model_points5=None, scale: float | None = None) -> Alignment:
    """Manual fallback: a similarity from picked points (the 5 or 7 landmarks of
    `template_landmarks`) to their model-frame positions (template's by default)."""
    src = np.asarray(scan_points5, dtype=np.float64)
    if src.ndim != 2 or src.shape[-1] != 3:
        raise MeshError(f"landmarks must be (N, 3) points, got shape {src.shape}")
    dst = template_landmarks(len(src)) if model_points5 is None else np.asarray(model_points5, float)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise MeshError(f"need matching (N >= 3, 3) point sets, got {src.shape} and {dst.shape}")
    if np.linalg.matrix_rank(src - src.mean(0), tol=1e-9 * np.abs(src).max()) < 2:
        raise MeshError("the picked points are collinear or coincide; pick 5 distinct points")
    s, r, t = similarity(src, dst, scale=scale)
    m = similarity_matrix(s, r, t)
    res = np.linalg.norm(apply_matrix(m, src) - dst, axis=1)
    return Alignment(m, s, float(np.sqrt(np.mean(res**2)) * 100.0))


def align_landmarks68(scan_lm68, metres_per_unit: float) -> Alignment:
    """Paper step 1 with known landmarks: rigid fit of the 68 points to the template's at the
    scan's metric scale, then the nose tip (landmark 30) put exactly on (0, 0, 0.4)."""
    scale = metres_per_unit / MODEL_UNIT_M
    a = align_from_landmarks(scan_lm68, template().landmarks68, scale=scale)
    m = a.transform.copy()
    m[:3, 3] += NOSE - apply_matrix(m, np.asarray(scan_lm68)[30])
    return Alignment(m, scale, a.residual_mm)
