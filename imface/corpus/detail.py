"""Procedural fine detail for the synthetic corpus (what Anny lacks: it is smooth and linear).

All of this is synthetic and says nothing about real skin: a displacement in millimetres along
the surface normal, defined on *canonical* coordinates (where each vertex of the subdivided mesh
sits on the average neutral head, in mm relative to its nose tip, model axes) so the detail sticks
to the skin as the face moves:

- forehead lines (brow raise), glabella lines (brow lowering), crow's feet (squint / smile) and
  nasolabial folds (smile, sneer, upper-lip raise): grooves whose depth follows the expression's
  action weights and the person's age factor, with a faint permanent trace;
- identity skin relief: a few random low-amplitude sinusoids (~0.05 mm, 3-12 mm wavelengths).
"""

from __future__ import annotations

import numpy as np


def _groove(phase, sharpness=6.0):
    """Periodic narrow grooves in [0, 1]: 1 at the groove centre."""
    return (0.5 + 0.5 * np.cos(phase)) ** sharpness


def _smooth_box(t, lo, hi, soft):
    return np.clip((t - lo) / soft, 0, 1) * np.clip((hi - t) / soft, 0, 1)


def forehead_lines(c, lm, depth):
    y0 = max(lm[19][1], lm[24][1]) + 8.0
    y = c[:, 1] - 0.004 * c[:, 0] ** 2  # lines curve down towards the temples
    mask = _smooth_box(c[:, 1], y0, y0 + 40, 6) * _smooth_box(c[:, 0], -48, 48, 12)
    mask *= c[:, 2] > -60
    return -depth * mask * _groove(2 * np.pi * (y - y0) / 9.0 + 0.3 * np.sin(c[:, 0] / 15))


def glabella_lines(c, lm, depth):
    y0 = 0.5 * (lm[21][1] + lm[22][1])
    mask = _smooth_box(c[:, 1], y0 - 12, y0 + 14, 4) * (c[:, 2] > -60)
    lines = np.exp(-(((np.abs(c[:, 0]) - 5.5) / 1.2) ** 2))
    return -depth * mask * lines


def crows_feet(c, lm, depth):
    out = np.zeros(len(c))
    for corner, side in ((lm[36], -1.0), (lm[45], 1.0)):
        d = c[:, :2] - corner[:2]
        r = np.linalg.norm(d, axis=1)
        ang = np.arctan2(d[:, 1], side * d[:, 0])  # 0 = pointing away from the eye
        mask = _smooth_box(r, 4, 22, 4) * _smooth_box(ang, -0.9, 0.9, 0.3) * (c[:, 2] > -70)
        out -= depth * mask * _groove(ang * 7.0, 4.0)
    return out


def nasolabial_folds(c, lm, depth):
    """A groove from beside the nose wing to beside the mouth corner, a bulge on its cheek side."""
    out = np.zeros(len(c))
    for ala, corner, side in ((lm[31], lm[48], -1.0), (lm[35], lm[54], 1.0)):
        a = ala[:2] + [side * 7.0, 3.0]
        b = corner[:2] + [side * 7.0, -4.0]
        ab = b - a
        t = np.clip(((c[:, :2] - a) @ ab) / (ab @ ab), 0, 1)
        off = c[:, :2] - (a + t[:, None] * ab)
        dist = np.linalg.norm(off, axis=1)
        outward = np.sign(off[:, 0] * side)  # cheek side of the line
        along = np.sin(np.pi * t) ** 0.5
        front = c[:, 2] > -50
        out += (
            depth
            * along
            * front
            * (-np.exp(-((dist / 2.2) ** 2)) + 0.4 * (outward > 0) * np.exp(-(((dist - 5) / 3.5) ** 2)))
        )
    return out


def skin_relief(c, seed, amplitude=0.05):
    rng = np.random.default_rng(seed)
    k = rng.normal(size=(12, 3))
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    wavelengths = rng.uniform(3.0, 12.0, 12)
    phases = rng.uniform(0, 2 * np.pi, 12)
    waves = np.sin(c @ (k / wavelengths[:, None]).T * 2 * np.pi + phases)
    return amplitude * waves.sum(1) / np.sqrt(12)


def displacement_mm(canon, lm, actions, age_wrinkles, seed):
    """Normal displacement (mm) of every canonical point for one scan."""
    a = lambda *names: sum(actions.get(n, 0.0) for n in names)  # noqa: E731
    fold = 0.5 + age_wrinkles  # older skin folds deeper
    brow_up = min(1.0, a("browInnerUp") + 0.5 * a("browOuterUpLeft", "browOuterUpRight"))
    brow_down = min(
        1.0, 0.5 * a("browDownLeft", "browDownRight") + 0.3 * a("noseSneerLeft", "noseSneerRight")
    )
    squint = min(
        1.0,
        0.5 * a("eyeSquintLeft", "eyeSquintRight", "cheekSquintLeft", "cheekSquintRight")
        + 0.3 * a("mouthSmileLeft", "mouthSmileRight"),
    )
    smile = min(
        1.0,
        0.5
        * a(
            "mouthSmileLeft",
            "mouthSmileRight",
            "mouthUpperUpLeft",
            "mouthUpperUpRight",
            "noseSneerLeft",
            "noseSneerRight",
        ),
    )
    d = forehead_lines(canon, lm, fold * (0.08 + 0.45 * brow_up))
    d += glabella_lines(canon, lm, fold * (0.03 + 0.5 * brow_down))
    d += crows_feet(canon, lm, fold * (0.03 + 0.35 * squint))
    d += nasolabial_folds(canon, lm, fold * (0.25 + 1.1 * smile))
    d += skin_relief(canon, seed)
    return d
