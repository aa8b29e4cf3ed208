"""Load any scan: OBJ, PLY, STL, OFF, GLB/GLTF meshes, or bare point clouds (PLY, XYZ, NPY).

Convention: ``Scan.vertices`` are float64 in the file's **own frame and unit** (nothing is moved
or rescaled here); ``Scan.unit`` is the unit they are in ('m', 'cm' or 'mm', guessed from the size
unless given) and ``Scan.metres`` is the factor to metres. ``align.align_scan`` turns this into the
model frame and records the similarity transform, so results can go back to the scan's frame.
Every problem raises ``MeshError`` with one line naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imface.errors import MeshError
from imface.paths import missing_reason
from imface.units import UNITS

MESH_SUFFIXES = {".obj", ".ply", ".stl", ".off", ".glb", ".gltf"}
POINT_SUFFIXES = {".xyz", ".npy", ".txt", ".pts"}
MAX_VERTICES = 1_500_000  # larger meshes are decimated (vertex clustering) on load


@dataclass
class Scan:
    vertices: np.ndarray  # (V, 3) float64, file frame and unit
    faces: np.ndarray | None  # (F, 3) int64, or None for a point cloud
    unit: str
    path: str = ""
    decimated_from: int | None = None  # original vertex count when decimated

    @property
    def metres(self) -> float:
        return UNITS[self.unit]

    @property
    def is_point_cloud(self) -> bool:
        return self.faces is None


def guess_unit(vertices: np.ndarray) -> str:
    """A head or face is 0.1-0.4 m across: the bounding-box diagonal tells the unit apart."""
    diag = float(np.linalg.norm(np.ptp(vertices, axis=0)))
    if diag < 3.0:
        return "m"
    if diag < 95.0:
        return "cm"
    return "mm"


def parse_unit(unit: str | None) -> str | None:
    if unit is None or unit == "auto":
        return None
    if unit not in UNITS:
        raise MeshError(f"unknown unit {unit!r}: use one of m, cm, mm")
    return unit


def load_scan(path, unit: str | None = None, max_vertices: int = MAX_VERTICES) -> Scan:
    """Read a mesh or a point cloud; validate it; decimate huge meshes; guess the unit."""
    path = Path(path)
    unit = parse_unit(unit)
    if not path.exists():
        raise MeshError(f"{path}: {missing_reason(path)}")  # "no such file", "a symlink loop", ...
    if path.is_dir():
        raise MeshError(f"{path}: is a folder, not a scan file")
    if path.stat().st_size == 0:
        raise MeshError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    if suffix in POINT_SUFFIXES:
        vertices, faces = _read_points(path), None
    elif suffix in MESH_SUFFIXES:
        vertices, faces = _read_mesh(path)
    else:
        raise MeshError(
            f"{path}: unsupported file type {suffix!r} "
            f"(use {', '.join(sorted(MESH_SUFFIXES | POINT_SUFFIXES))})"
        )
    vertices, faces = validate(vertices, faces, path)
    original = None
    if faces is not None and len(vertices) > max_vertices:
        original = len(vertices)
        vertices, faces = decimate(vertices, faces, max_vertices)
    return Scan(vertices, faces, unit or guess_unit(vertices), str(path), original)


def _read_points(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            pts = np.load(path, allow_pickle=False)
        else:
            pts = np.loadtxt(path, comments="#", ndmin=2)
    except Exception as exc:
        raise MeshError(f"{path}: cannot read points ({_short(exc)})") from None
    pts = np.asarray(pts)
    if pts.ndim != 2 or pts.shape[1] < 3 or not np.issubdtype(pts.dtype, np.number):
        raise MeshError(f"{path}: expected an (N, 3) array of points, got shape {pts.shape}")
    return pts[:, :3].astype(np.float64)


def _read_mesh(path: Path):
    import trimesh

    try:
        loaded = trimesh.load(str(path), process=False)
    except Exception as exc:
        raise MeshError(
            f"{path}: cannot read the file as {path.suffix[1:].upper()} ({_short(exc)})"
        ) from None
    if isinstance(loaded, trimesh.Scene):  # GLB/GLTF/OBJ with several parts: bake transforms
        geoms = list(loaded.dump()) if loaded.geometry else []
        meshes = [g for g in geoms if isinstance(g, trimesh.Trimesh)]
        clouds = [g for g in geoms if isinstance(g, trimesh.PointCloud)]
        if meshes:
            loaded = trimesh.util.concatenate(meshes)
        elif clouds:
            loaded = trimesh.PointCloud(np.vstack([c.vertices for c in clouds]))
        else:
            raise MeshError(f"{path}: the file holds no mesh or points")
    if isinstance(loaded, trimesh.PointCloud):
        return np.asarray(loaded.vertices, dtype=np.float64), None
    if not isinstance(loaded, trimesh.Trimesh):
        raise MeshError(f"{path}: the file holds no triangle mesh or points")
    faces = np.asarray(loaded.faces, dtype=np.int64)
    vertices = np.asarray(loaded.vertices, dtype=np.float64)
    return vertices, (faces if len(faces) else None)


def validate(vertices, faces, path) -> tuple[np.ndarray, np.ndarray | None]:
    """Reject empty, non-finite and degenerate geometry; drop unusable triangles."""
    if vertices is None or len(vertices) == 0:
        raise MeshError(f"{path}: the file holds no vertices")
    bad = ~np.isfinite(vertices).all(1)
    if bad.any():
        raise MeshError(f"{path}: {int(bad.sum())} vertices have NaN or infinite coordinates")
    if faces is not None:
        if faces.min() < 0 or faces.max() >= len(vertices):
            raise MeshError(f"{path}: faces refer to vertices that do not exist")
        a, b, c = (vertices[faces[:, i]] for i in range(3))
        area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
        scale = float(np.linalg.norm(np.ptp(vertices, axis=0)))
        good = area > (scale * 1e-7) ** 2
        if not good.any():
            raise MeshError(f"{path}: every triangle has zero area (degenerate mesh)")
        faces = faces[good]
    extent = np.ptp(vertices, axis=0)
    if len(vertices) < 100:
        raise MeshError(f"{path}: only {len(vertices)} points; a face scan needs thousands")
    if np.sort(extent)[1] <= 1e-9 * max(extent.max(), 1e-30):
        raise MeshError(f"{path}: the points are collinear or all the same (degenerate)")
    return vertices, faces


def decimate(vertices, faces, max_vertices):
    """Vertex-clustering decimation on a uniform grid: memory-light for millions of vertices."""
    extent = np.ptp(vertices, axis=0)
    cell = float(np.cbrt(np.prod(extent + 1e-12) / max_vertices))
    # A surface fills a small part of its box: shrink cells until the budget is used well.
    for _ in range(8):
        cells = np.floor((vertices - vertices.min(0)) / cell).astype(np.int64)
        dims = cells.max(0) + 1
        keys = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]  # one int per cell
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        if len(counts) >= max_vertices * 0.4:
            break
        cell *= 0.6
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(counts), 3))
    np.add.at(sums, inverse, vertices)
    new_v = sums / counts[:, None]
    new_f = inverse[faces]
    a, b, c = new_f.T
    keep = (a != b) & (b != c) & (a != c)
    return new_v, new_f[keep]


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def load_landmarks(path) -> np.ndarray:
    """Landmarks in the scan's frame and unit: 5 or 7 points as JSON (a list of [x, y, z], or an
    object with a "landmarks" or "points" list) or text (one point a line, spaces or commas)."""
    import json

    path = Path(path)
    if not path.is_file():
        raise MeshError(f"{path}: no such landmarks file")
    text = path.read_text(errors="replace")
    try:
        if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
            data = json.loads(text)
            if isinstance(data, dict):
                data = data.get("landmarks", data.get("points"))
            points = np.asarray(data, dtype=np.float64)
        else:
            rows = [r.replace(",", " ").split() for r in text.splitlines()]
            points = np.asarray([[float(x) for x in r[:3]] for r in rows if r and not r[0].startswith("#")])
    except (ValueError, TypeError) as exc:
        raise MeshError(f"{path}: cannot read landmarks ({_short(exc)})") from None
    if points.ndim != 2 or points.shape[1] != 3 or len(points) not in (5, 7):
        raise MeshError(f"{path}: expected 5 or 7 points of x y z, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise MeshError(f"{path}: landmarks must be finite numbers")
    return points
