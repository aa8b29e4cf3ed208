"""Geometry metrics (EVALUATION.md): Chamfer-L1, F-score, normal consistency, correspondence error.

All distances are computed in the units of the inputs; helpers take model-frame meshes (100 mm
units) and report millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from imface.units import MM_PER_UNIT

PROTOCOL_POINTS = 150_000  # points sampled on each surface for Chamfer and F-scores


@dataclass
class SurfaceSample:
    points: np.ndarray  # (N, 3)
    normals: np.ndarray  # (N, 3)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, count: int, seed: int = 0) -> SurfaceSample:
    """Area-uniform points on a triangle mesh, with face normals."""
    v = np.asarray(vertices, dtype=np.float64)
    tri = v[np.asarray(faces)]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(cross, axis=1)
    if area.sum() <= 0:
        raise ValueError("mesh has no area")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(faces), size=count, p=area / area.sum())
    u, w = rng.random(count), rng.random(count)
    flip = u + w > 1
    u[flip], w[flip] = 1 - u[flip], 1 - w[flip]
    t = tri[chosen]
    points = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + w[:, None] * (t[:, 2] - t[:, 0])
    normals = cross[chosen] / np.maximum(area[chosen], 1e-20)[:, None]
    return SurfaceSample(points, normals)


def inside_region(points: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    return np.linalg.norm(points - centre, axis=1) <= radius


def compare_samples(
    prediction: SurfaceSample, truth: SurfaceSample, thresholds=(0.01, 0.025), scale: float = MM_PER_UNIT
) -> dict[str, float]:
    """Chamfer-L1 (mean of both directions), F-scores at thresholds, normal consistency.

    Distances are multiplied by `scale` (model units -> mm by default); thresholds are in input
    units (0.01 = 1 mm in the model frame).
    """
    if len(prediction.points) == 0 or len(truth.points) == 0:
        raise ValueError("cannot compare an empty surface")
    d_pred, i_pred = cKDTree(truth.points).query(prediction.points, workers=-1)
    d_true, i_true = cKDTree(prediction.points).query(truth.points, workers=-1)
    result = {"chamfer_mm": float(0.5 * (d_pred.mean() + d_true.mean()) * scale)}
    for t in thresholds:
        precision = float((d_pred < t).mean())
        recall = float((d_true < t).mean())
        f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        result[f"fscore_{t * scale:g}mm"] = 100.0 * f
    cos_pred = np.abs((prediction.normals * truth.normals[i_pred]).sum(1))
    cos_true = np.abs((truth.normals * prediction.normals[i_true]).sum(1))
    result["normal_consistency"] = float(0.5 * (cos_pred.mean() + cos_true.mean()))
    return result


def compare_meshes(
    pred_vertices,
    pred_faces,
    true_vertices,
    true_faces,
    count: int = PROTOCOL_POINTS,
    region_centre=None,
    region_radius: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """The official protocol: `count` points on each mesh inside the region sphere (model frame:
    radius 1 = 100 mm around the point 40 mm behind the nose tip, i.e. the origin)."""
    centre = np.zeros(3) if region_centre is None else np.asarray(region_centre, dtype=np.float64)
    pred = sample_in_region(pred_vertices, pred_faces, count, centre, region_radius, seed)
    true = sample_in_region(true_vertices, true_faces, count, centre, region_radius, seed + 1)
    return compare_samples(pred, true)


def sample_in_region(vertices, faces, count, centre, radius, seed=0) -> SurfaceSample:
    """Up to `count` area-uniform surface points inside the sphere (centre, radius)."""
    # oversample, then keep the points inside the region
    sample = sample_surface(vertices, faces, int(count * 1.5), seed)
    keep = inside_region(sample.points, centre, radius)
    return SurfaceSample(sample.points[keep][:count], sample.normals[keep][:count])


def correspondence_error_mm(predicted: np.ndarray, truth: np.ndarray, scale: float = MM_PER_UNIT) -> float:
    """Mean distance between predicted and true positions of corresponding points."""
    return float(np.linalg.norm(np.asarray(predicted) - np.asarray(truth), axis=1).mean() * scale)


# iBUG-68 landmark groups; a vertex belongs to the region of its nearest landmark
LANDMARK_REGIONS = {
    "jaw_cheeks": range(0, 17),
    "brows": range(17, 27),
    "nose": range(27, 36),
    "eyes": range(36, 48),
    "mouth": range(48, 68),
}


def face_regions(vertices: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
    """Region name of each vertex (nearest iBUG-68 landmark's group), for per-region reports."""
    names = np.empty(68, dtype=object)
    for name, indices in LANDMARK_REGIONS.items():
        names[list(indices)] = name
    _, nearest = cKDTree(np.asarray(landmarks68)).query(np.asarray(vertices))
    return names[nearest]


def correspondence_error_by_region(
    predicted: np.ndarray, truth: np.ndarray, regions: np.ndarray, scale: float = MM_PER_UNIT
) -> dict[str, float]:
    """Mean correspondence error (mm) per region label, plus "all"."""
    distance = np.linalg.norm(np.asarray(predicted) - np.asarray(truth), axis=1) * scale
    result = {"all": float(distance.mean())}
    for name in LANDMARK_REGIONS:
        chosen = regions == name
        if chosen.any():
            result[name] = float(distance[chosen].mean())
    return result


@dataclass
class SurfaceDefects:
    """Pieces of a face surface inside the model's region besides the main one: floating
    blobs, flaps cut loose. Areas in mm^2."""

    components: int  # connected pieces with a triangle inside the region
    main_area_mm2: float
    stray_area_mm2: float  # area of every other piece inside the region

    @property
    def clean(self) -> bool:
        return self.components <= 1


def surface_defects(vertices: np.ndarray, faces: np.ndarray, radius: float = 1.0) -> SurfaceDefects:
    """Connected pieces of a model-frame mesh whose triangles lie inside the sphere of `radius`
    about the model origin (the 100 mm region), and the area outside the largest one."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    v, f = np.asarray(vertices, dtype=np.float64), np.asarray(faces)
    tri = v[f]
    inside = np.linalg.norm(tri.mean(axis=1), axis=1) < radius
    f, tri = f[inside], tri[inside]
    if len(f) == 0:
        return SurfaceDefects(0, 0.0, 0.0)
    rows = np.concatenate([f[:, 0], f[:, 1]])
    cols = np.concatenate([f[:, 1], f[:, 2]])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(len(v), len(v)))
    _, label = connected_components(graph, directed=False)
    face_label = label[f[:, 0]]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    per_piece = np.bincount(face_label, weights=area)
    pieces = np.flatnonzero(per_piece > 0)
    main = per_piece.max()
    scale = MM_PER_UNIT**2
    return SurfaceDefects(len(pieces), float(main * scale), float((per_piece.sum() - main) * scale))
