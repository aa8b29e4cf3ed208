"""What the fit sees of a scan: SDF samples in the model frame that do not depend on the scan's
pose, unit, vertex order or on whether it came as a mesh or a point cloud.

Random samples drawn over the scan's triangle list change wholesale when one triangle enters or
leaves the crop (every later draw shifts), and random minibatches then differ at every step: the
same scan in another pose fitted to codes tens of percent apart. Here every surface sample is
drawn from a hash of its triangle's index in the scan (the same in any pose) and of its number
on that triangle, and minibatches are chosen by a hash of the same key: two placements of the
same scan give the same points and the same batches, except on the few triangles that the
alignment's own tolerance moves across the crop. Space samples are a fixed seeded ball of the
model frame.

A bare point cloud becomes a surface first: its visible points (a z-buffer in the model frame),
triangulated as a height field over x, y without the long edges across holes; the normals are
those of that triangulation (each point's normal is estimated from its neighbours).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import Delaunay

from imface.errors import MeshError
from imface.metrics import PROTOCOL_POINTS, SurfaceSample, sample_in_region

SURFACE = 30_000  # surface samples
SPACE = 8_000  # space samples in the unit ball
GOLDEN = 0.6180339887498949
QUANTUM = 1e-5  # model units (1 um)
MAX_PER_TRIANGLE = 1 << 20  # sample keys: triangle key * this + the sample's number on it
# Fewer points than this inside the face region (the 100 mm sphere; about one per 5 mm) leave
# the triangulation too coarse to give the nose and lips their normals: refused.
MIN_CLOUD_POINTS = 1_000


def scan_samples(vertices_model, faces) -> dict[str, torch.Tensor]:
    """Surface points/normals (keyed per triangle) and space points/SDF of a scan in the model frame,
    with a per-sample hash in [0, 1) that fixes the minibatches."""
    return surface_samples(visible_surface(vertices_model, faces))


def surface_samples(surface) -> dict[str, torch.Tensor]:
    """`scan_samples` of a scan's `visible_surface`."""
    from imface.samples.preprocess import delaunay_sheet, sheet_sdf, uniform_ball

    v, f, kept = surface
    points, fidx, keys = keyed_surface_samples(v, f, kept, SURFACE)
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
        "surface_hash": t(cell_hash(3 * keys)),
        "space_points": t(space),
        "space_sdf": t(sdf),
        "space_hash": t(cell_hash(np.arange(SPACE, dtype=np.int64))),
    }


def visible_surface(vertices_model, faces) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scan's surface seen from the front in the model frame (a bare cloud triangulated
    first): its vertices, its triangles, and each triangle's index among the scan's."""
    from imface.samples.preprocess import _submesh, visible_faces

    # rounded to 1 um: the same scan placed by two alignments that agree to float precision (other
    # pose, other unit) gives bit-identical samples; the fit amplifies even 1e-12 differences
    v_model = np.round(np.asarray(vertices_model, np.float64) / QUANTUM) * QUANTUM
    if faces is None or len(faces) == 0:
        faces = cloud_surface(v_model)
    faces = np.asarray(faces, np.int64)
    kept = visible_faces(v_model, faces)
    v, f = _submesh(v_model, faces[kept])
    return v, f, kept


def scan_truth(vertices_model, faces, count: int = PROTOCOL_POINTS) -> SurfaceSample:
    """The scan as the scores see it: `count` area-uniform points of its visible surface inside
    the region (the protocol's 150 k; the fit's 30 k samples would put a ~0.2 mm floor of
    sampling distance under every Chamfer)."""
    return surface_truth(visible_surface(vertices_model, faces), count)


def surface_truth(surface, count: int = PROTOCOL_POINTS) -> SurfaceSample:
    """`scan_truth` of a scan's `visible_surface`."""
    v, f, _ = surface
    return sample_in_region(v, f, count, np.zeros(3), 1.0)


def keyed_surface_samples(vertices, faces, face_keys, count: int):
    """About `count` area-weighted points on the triangles: (points, triangle of each, key of
    each). A triangle of key k gets floor(expected + hash(k)) points (its expected share,
    rounded up or down by its own hash) at barycentric coordinates hashed from (k, number); the
    points come in the order of their own hash, so any prefix is spread over the scan."""
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face_keys = np.asarray(face_keys, np.int64)
    per_face = np.floor(count * area / area.sum() + cell_hash(face_keys)).astype(np.int64)
    fidx = np.repeat(np.arange(len(faces)), per_face)
    number = np.arange(len(fidx)) - np.repeat(np.cumsum(per_face) - per_face, per_face)
    keys = face_keys[fidx] * MAX_PER_TRIANGLE + number
    order = np.argsort(cell_hash(3 * keys), kind="stable")  # any prefix is a spread-out subset
    fidx, keys = fidx[order], keys[order]
    s, r2 = np.sqrt(cell_hash(3 * keys + 1)), cell_hash(3 * keys + 2)
    w = np.stack([1 - s, s * (1 - r2), s * r2], 1)
    return np.einsum("nk,nkd->nd", w, tri[fidx]), fidx, keys


def cell_hash(keys) -> np.ndarray:
    """A fixed pseudo-random number in [0, 1) per integer key (the splitmix64 finaliser: a
    multiplicative hash alone maps consecutive keys to an evenly stepped sequence, which aliases
    with the order of a mesh's triangles, e.g. the slices of a CT surface)."""
    z = np.asarray(keys).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


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
