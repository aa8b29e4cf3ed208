"""What the fit sees of a scan: SDF samples in the model frame that do not depend on the scan's
pose, unit, vertex order or on whether it came as a mesh or a point cloud.

Random samples drawn over the scan's triangles change wholesale when one triangle enters or
leaves the crop (the draw is over the triangle list), and random minibatches then differ at every
step: the same scan in another pose fitted to codes tens of percent apart. Here the dense surface
samples are reduced to one point per cell of a fixed 1.5 mm grid of the model frame (the one
nearest the cell centre), and minibatches are chosen by a hash of the cell, so two placements of
the same scan give the same points and the same batches up to the alignment's own tolerance.
Space samples are a fixed seeded ball of the model frame.

A bare point cloud becomes a surface first: its visible points (a z-buffer in the model frame),
triangulated as a height field over x, y without the long edges across holes; the normals are
those of that triangulation (each point's normal is estimated from its neighbours).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import Delaunay

from imface.errors import MeshError

SURFACE = 30_000  # surface samples
SPACE = 8_000  # space samples in the unit ball
GOLDEN = 0.6180339887498949
QUANTUM = 1e-5  # model units (1 um)
# Fewer points than this inside the face region (the 100 mm sphere; about one per 5 mm) leave
# the triangulation too coarse to give the nose and lips their normals: refused.
MIN_CLOUD_POINTS = 1_000


def scan_samples(vertices_model, faces) -> dict[str, torch.Tensor]:
    """Surface points/normals (grid-reduced) and space points/SDF of a scan in the model frame,
    with a per-sample hash in [0, 1) that fixes the minibatches."""
    from imface.samples.preprocess import (
        _sample_triangles,
        delaunay_sheet,
        sheet_sdf,
        uniform_ball,
        visible_surface,
    )

    # rounded to 1 um: the same scan placed by two alignments that agree to float precision (other
    # pose, other unit) gives bit-identical samples; the fit amplifies even 1e-12 differences
    v_model = np.round(np.asarray(vertices_model, np.float64) / QUANTUM) * QUANTUM
    if faces is None or len(faces) == 0:
        faces = cloud_surface(v_model)
    v, f = visible_surface(v_model, np.asarray(faces, np.int64))
    points, fidx = _sample_triangles(v, f, SURFACE, np.random.default_rng(0))
    tri = v[f[fidx]]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-30
    normals[normals[:, 2] < 0] *= -1  # the visible surface faces the viewer (+z)
    space = uniform_ball(SPACE, np.random.default_rng(1))
    sdf, _ = sheet_sdf(delaunay_sheet(v), space)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return {
        "surface_points": t(points),
        "surface_normals": t(normals),
        "surface_hash": t(cell_hash(np.arange(SURFACE, dtype=np.int64))),
        "space_points": t(space),
        "space_sdf": t(sdf),
        "space_hash": t(cell_hash(np.arange(SPACE, dtype=np.int64))),
    }


def cell_hash(keys) -> np.ndarray:
    """A fixed pseudo-random number in [0, 1) per integer key (Fibonacci hashing)."""
    k = np.asarray(keys).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = (k * np.uint64(0x9E3779B97F4A7C15)) ^ (k >> np.uint64(29))
        h = h * np.uint64(0xBF58476D1CE4E5B9)
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


def batch_mask(hashes: torch.Tensor, iteration: int, fraction: float) -> torch.Tensor:
    """The samples of one iteration: a window of the hash circle that moves every step."""
    if fraction >= 1.0:
        return torch.ones_like(hashes, dtype=torch.bool)
    return torch.remainder(hashes - iteration * GOLDEN, 1.0) < fraction


def cloud_surface(points_model, zbuffer_mm=2.0, depth_mm=8.0) -> np.ndarray:
    """Triangles over the visible part of a point cloud (model frame): points within
    `depth_mm` of the front-most point of their `zbuffer_mm` x-y cell, Delaunay over x, y, and
    no triangle with an edge longer than 4 times the typical spacing (holes stay holes)."""
    p = np.asarray(points_model, np.float64)
    inside = np.linalg.norm(p, axis=1) < 1.0
    if inside.sum() < MIN_CLOUD_POINTS:
        raise MeshError(
            f"only {int(inside.sum())} points of the cloud lie in the face region; fitting a "
            f"point cloud needs >= {MIN_CLOUD_POINTS} there (about one per 3 mm)"
        )
    cell = np.floor(p[:, :2] / (zbuffer_mm / 100.0)).astype(np.int64)
    key = (cell[:, 0] + 2**20) * 2**21 + cell[:, 1]
    key = np.where(inside, key, -1)
    uniq, inv = np.unique(key, return_inverse=True)
    best = np.full(len(uniq), -np.inf)
    np.maximum.at(best, inv, p[:, 2])
    top = best[inv]
    front = inside & (p[:, 2] >= top - depth_mm / 100.0)
    idx = np.flatnonzero(front)
    tri = idx[Delaunay(p[idx, :2]).simplices]
    edges = np.stack([p[tri[:, i]] - p[tri[:, (i + 1) % 3]] for i in range(3)], 1)
    longest = np.linalg.norm(edges, axis=2).max(1)
    keep = longest < 4.0 * np.median(longest)
    if keep.sum() < 10:
        raise MeshError("the point cloud has no surface in the face region to fit")
    return tri[keep]
