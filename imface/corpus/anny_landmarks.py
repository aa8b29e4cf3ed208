"""Derive the 68 iBUG-style landmark vertices on the Anny head topology (run once, shipped).

    python -m imface.corpus.anny_landmarks [--render out.png]

Rules on the average head (model axes, metres) seen from the front: eye corners and the mouth
line are the extreme points of sharp-crease edges (lid margins, lip line); inner-lip vertices are
split into upper and lower lip by opening the jaw; contour, brows, nose and outer lips follow
fixed proportions of those anchors and are projected onto the front-most surface. Only the right
half and midline are derived; the left half is the mirror vertex, so the set is symmetric.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.spatial import cKDTree


def _front_vertex(v, normals, xy, radius=0.004, min_nz=0.0, exclude=()):
    """The front-most vertex (largest z) whose (x, y) lies within `radius` of `xy`."""
    d = np.linalg.norm(v[:, :2] - np.asarray(xy), axis=1)
    ok = (d < radius) & (normals[:, 2] >= min_nz)
    ok[list(exclude)] = False
    if not ok.any():
        ok = d <= np.sort(d)[5]
    idx = np.flatnonzero(ok)
    return int(idx[np.argmax(v[idx, 2])])


def _sharp_vertices(mesh, angle_deg=50.0):
    edges = mesh.face_adjacency_edges[mesh.face_adjacency_angles > np.radians(angle_deg)]
    return np.unique(edges)


def derive(v, faces, v_open):
    """68 vertex indices from the neutral average head `v` and the same head with jaw open."""
    import trimesh

    mesh = trimesh.Trimesh(v, faces, process=False)
    n = mesh.vertex_normals
    mid = np.abs(v[:, 0]) < 0.002
    nose = int(np.flatnonzero(mid)[np.argmax(v[mid, 2])])
    N = v[nose]
    sharp = _sharp_vertices(mesh)
    sv = v[sharp]
    front = sv[:, 2] > N[2] - 0.06
    eye = sharp[
        front & (sv[:, 0] < -0.01) & (sv[:, 0] > -0.07) & (sv[:, 1] > N[1] + 0.01) & (sv[:, 1] < N[1] + 0.06)
    ]
    mouth = sharp[front & (np.abs(sv[:, 0]) < 0.04) & (sv[:, 1] < N[1] - 0.012) & (sv[:, 1] > N[1] - 0.06)]
    L = {}
    # Right eye (subject's right = -x): corners are the x-extremes of the lid-margin crease.
    outer, inner = eye[np.argmin(v[eye, 0])], eye[np.argmax(v[eye, 0])]
    L[36], L[39] = int(outer), int(inner)
    c0, c1 = v[outer], v[inner]
    width = c1[0] - c0[0]
    ymid = 0.5 * (c0[1] + c1[1])
    for k, t, up in ((37, 1 / 3, 1), (38, 2 / 3, 1), (40, 2 / 3, -1), (41, 1 / 3, -1)):
        x = c0[0] + t * width
        cand = eye[(np.abs(v[eye, 0] - x) < 0.004) & (up * (v[eye, 1] - ymid) > 0)]
        if len(cand):
            L[k] = int(cand[np.argmin(np.abs(v[cand, 0] - x))])
        else:
            L[k] = _front_vertex(v, n, (x, ymid + up * 0.25 * width * 0.4))
    # Mouth corners and the closed lip line; the jaw-open head separates upper and lower lips.
    m0 = mouth[np.argmin(v[mouth, 0])]
    L[48] = int(m0)
    half = -v[m0, 0]
    lip_y = v[m0, 1]
    drop = v[:, 1] - v_open[:, 1]  # how far each vertex moves down when the jaw opens
    line = mouth[np.abs(v[mouth, 1] - lip_y) < 0.01]
    upper = line[drop[line] < 0.3 * drop[line].max()]
    lower = line[drop[line] >= 0.3 * drop[line].max()]
    for k, grp, x in (
        (61, upper, -half / 3),
        (62, upper, 0.0),
        (66, lower, 0.0),
        (67, lower, -half / 3),
    ):
        L[k] = int(grp[np.argmin(np.abs(v[grp, 0] - x) + 0.3 * np.abs(v[grp, 1] - lip_y))])
    corner_inner = line[np.argsort(np.abs(v[line, 0] + 0.85 * half))]
    L[60] = int(corner_inner[0])
    # Outer lips: labrale superius / inferius are the most anterior midline points.
    ups = np.flatnonzero(mid & (v[:, 1] > lip_y) & (v[:, 1] < N[1] - 0.012))
    lows = np.flatnonzero(mid & (v[:, 1] < lip_y) & (v[:, 1] > lip_y - 0.02))
    L[51] = int(ups[np.argmax(v[ups, 2])])
    L[57] = int(lows[np.argmax(v[lows, 2])])
    top, bot = v[L[51], 1], v[L[57], 1]
    L[50] = _front_vertex(v, n, (-0.35 * half, top + 0.001), 0.003)
    L[49] = _front_vertex(v, n, (-0.7 * half, 0.5 * (top + lip_y)), 0.003)
    L[58] = _front_vertex(v, n, (-0.4 * half, bot + 0.002), 0.003)
    L[59] = _front_vertex(v, n, (-0.75 * half, 0.5 * (bot + lip_y)), 0.003)
    # Nose: bridge from the eye-corner level down to the tip; base at the alar crease level.
    bridge_top = 0.5 * (c1[1] + ymid)
    L[27] = _front_vertex(v, n, (0.0, bridge_top), 0.003)
    L[28] = _front_vertex(v, n, (0.0, bridge_top + (N[1] - bridge_top) / 3), 0.003)
    L[29] = _front_vertex(v, n, (0.0, bridge_top + 2 * (N[1] - bridge_top) / 3), 0.003)
    L[30] = nose
    # Subnasale: the deepest midline point between the tip and the upper lip.
    sub = np.flatnonzero(mid & (v[:, 1] < N[1] - 0.005) & (v[:, 1] > v[L[51], 1]))
    L[33] = int(sub[np.argmin(v[sub, 2])])
    y_base = v[L[33], 1] + 0.002
    L[31] = _front_vertex(v, n, (-0.45 * half, y_base), 0.003)
    L[32] = _front_vertex(v, n, (-0.22 * half, y_base - 0.001), 0.003)
    # Brows: an arch over the eye, from beyond the outer corner to above the inner corner.
    brow_base = ymid + 0.45 * width
    for k, t, lift in (
        (17, -0.1, 0.0),
        (18, 0.15, 0.004),
        (19, 0.4, 0.006),
        (20, 0.65, 0.006),
        (21, 0.9, 0.004),
    ):
        L[k] = _front_vertex(v, n, (c0[0] + t * width, brow_base + lift), 0.004)
    # Jaw contour: an ellipse from the eye-corner level (face width there, ears excluded) to
    # the chin, each point projected onto the front-most surface.
    below = np.flatnonzero(mid & (v[:, 1] < lip_y - 0.02))
    L[8] = int(below[np.argmax(-v[below, 1] + 0.8 * v[below, 2])])  # menton: most forward-down
    centre = np.array([0.0, ymid - 0.005])
    band = (np.abs(v[:, 1] - centre[1]) < 0.004) & (v[:, 2] > N[2] - 0.085) & (n[:, 2] > 0.1)
    a = np.abs(v[band, 0]).max()
    b = centre[1] - v[L[8], 1]
    for k in range(8):
        theta = np.radians(90.0 * k / 8.0)
        target = (-a * np.cos(theta), centre[1] - b * np.sin(theta))
        L[k] = _front_vertex(v, n, target, 0.004, min_nz=0.1)
    return _mirror(v, L)


# iBUG-68 left/right pairs (right-side index -> left-side index); midline points map to themselves.
_PAIRS = {
    **{i: 16 - i for i in range(8)},
    **{17 + i: 26 - i for i in range(5)},
    36: 45,
    37: 44,
    38: 43,
    39: 42,
    40: 47,
    41: 46,
    31: 35,
    32: 34,
    48: 54,
    49: 53,
    50: 52,
    59: 55,
    58: 56,
    60: 64,
    61: 63,
    67: 65,
}


def _mirror(v, L):
    tree = cKDTree(v)
    out = dict(L)
    for r, l in _PAIRS.items():
        out[l] = int(tree.query(v[L[r]] * [-1, 1, 1])[1])
    missing = [i for i in range(68) if i not in out]
    if missing:
        raise RuntimeError(f"landmarks not derived: {missing}")
    return [out[i] for i in range(68)]


def average_heads():
    """The average neutral head and the same head with the jaw open (model axes, metres)."""
    from imface.corpus.anny_head import Identity, anny_faces, anny_vertices, build_model

    model = build_model()
    ident = Identity({k: 0.5 for k in model.phenotype_labels}, {})
    return (
        anny_vertices(model, ident, {}),
        anny_faces(model),
        anny_vertices(model, ident, {"jawOpen": 1.0}),
    )


def render(v, faces, idx, path, view="front"):
    """Screenshot of the head with the 68 landmarks (for checking by eye; not committed)."""
    import pyvista as pv

    mesh = pv.PolyData(v, np.c_[np.full(len(faces), 3), faces].ravel())
    p = pv.Plotter(off_screen=True, window_size=(900, 900))
    p.add_mesh(mesh, color="w", smooth_shading=True)
    pts = v[idx]
    p.add_points(pts + [0, 0, 0.001], color="r", point_size=9, render_points_as_spheres=True)
    p.add_point_labels(
        pts + [0, 0, 0.003],
        [str(i) for i in range(68)],
        font_size=10,
        point_size=1,
        shape=None,
        text_color="blue",
        always_visible=True,
    )
    nose = v[idx[30]]
    eye = (0, nose[1], 0.8) if view == "front" else (0.8, nose[1], nose[2])
    p.camera_position = [eye, (0, nose[1], 0.0), (0, 1, 0)]
    p.camera.parallel_projection = True
    p.camera.parallel_scale = 0.085
    p.screenshot(path)
    p.close()


def main(argv=None) -> int:
    from imface.corpus.anny_head import LANDMARKS_FILE

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--render", help="write a front-view PNG with the landmarks")
    ap.add_argument("--side", help="write a side-view PNG with the landmarks")
    args = ap.parse_args(argv)
    v, faces, v_open = average_heads()
    idx = derive(v, faces, v_open)
    LANDMARKS_FILE.write_text(
        json.dumps(
            {
                "description": "iBUG-68 landmark vertex indices on the Anny head topology "
                "(makehuman-head rig, head-noeyes-notongue, 4200 vertices); "
                "derived by imface/data/anny_landmarks.py and checked by rendering",
                "indices": idx,
            },
            indent=1,
        )
        + "\n"
    )
    if args.render:
        render(v, faces, idx, args.render)
    if args.side:
        render(v, faces, idx, args.side, view="side")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
