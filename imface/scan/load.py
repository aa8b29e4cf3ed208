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
MAX_COLOUR_SAMPLES = 400_000  # colour samples kept per scan
TEXTURE_SAMPLES = 200_000  # surface points sampled per textured mesh (texel colours, not vertex)
DEFAULT_GREY = (102, 102, 102)  # what trimesh reports for a mesh without colours


@dataclass
class ScanColours:
    """Colour samples of a scan: points in the scan's frame and unit with their sRGB colour. Kept
    apart from the vertices, so textures give denser colour than the mesh and decimation loses none."""

    points: np.ndarray  # (P, 3) float64
    rgb: np.ndarray  # (P, 3) uint8 sRGB
    source: str  # "vertex colours", "texture", "point colours"


@dataclass
class Scan:
    vertices: np.ndarray  # (V, 3) float64, file frame and unit
    faces: np.ndarray | None  # (F, 3) int64, or None for a point cloud
    unit: str
    path: str = ""
    decimated_from: int | None = None  # original vertex count when decimated
    colours: ScanColours | None = None  # None: the file has no colour

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
        vertices, colours = _read_points(path)
        faces = None
    elif suffix in MESH_SUFFIXES:
        vertices, faces, colours = _read_mesh(path)
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
    return Scan(vertices, faces, unit or guess_unit(vertices), str(path), original, _limited(colours))


def _read_points(path: Path) -> tuple[np.ndarray, ScanColours | None]:
    """(N, 3) points; a fourth to sixth column, when present, is their RGB (0-255 or 0-1)."""
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
    points = pts[:, :3].astype(np.float64)
    colours = None
    if pts.shape[1] >= 6 and np.isfinite(pts[:, 3:6]).all() and pts[:, 3:6].min() >= 0:
        rgb = pts[:, 3:6].astype(np.float64)
        rgb = rgb * 255.0 if rgb.max() <= 1.0 else rgb
        if rgb.max() <= 255.0:
            colours = ScanColours(points, np.round(rgb).astype(np.uint8), "point colours")
    return points, colours


def _read_mesh(path: Path):
    import trimesh

    try:
        loaded = trimesh.load(str(path), process=False)
    except Exception as exc:
        raise MeshError(
            f"{path}: cannot read the file as {path.suffix[1:].upper()} ({_short(exc)})"
        ) from None
    geoms = [loaded]
    if isinstance(loaded, trimesh.Scene):  # GLB/GLTF/OBJ with several parts: bake transforms
        geoms = list(loaded.dump()) if loaded.geometry else []
        meshes = [g for g in geoms if isinstance(g, trimesh.Trimesh)]
        clouds = [g for g in geoms if isinstance(g, trimesh.PointCloud)]
        if meshes:
            geoms, loaded = meshes, trimesh.util.concatenate(meshes)
        elif clouds:
            geoms, loaded = clouds, trimesh.PointCloud(np.vstack([c.vertices for c in clouds]))
        else:
            raise MeshError(f"{path}: the file holds no mesh or points")
    colours = _join_colours([_colours_of(g) for g in geoms])
    if isinstance(loaded, trimesh.PointCloud):
        return np.asarray(loaded.vertices, dtype=np.float64), None, colours
    if not isinstance(loaded, trimesh.Trimesh):
        raise MeshError(f"{path}: the file holds no triangle mesh or points")
    faces = np.asarray(loaded.faces, dtype=np.int64)
    vertices = np.asarray(loaded.vertices, dtype=np.float64)
    return vertices, (faces if len(faces) else None), colours


# -- colour --------------------------------------------------------------------------------------
def _colours_of(geometry) -> ScanColours | None:
    """Colour samples of one trimesh geometry: texel colours of a base-colour texture, else
    vertex (or face) colours, else point colours; None when it has none (or only the default grey)."""
    import trimesh

    vertices = np.asarray(geometry.vertices, np.float64)
    if isinstance(geometry, trimesh.PointCloud):
        rgb = np.asarray(geometry.colors)[:, :3] if len(getattr(geometry, "colors", [])) else None
        return _if_coloured(vertices, rgb, "point colours")
    visual = geometry.visual
    if visual.kind == "texture":
        return _texture_colours(geometry)
    if visual.kind in ("vertex", "face"):
        return _if_coloured(vertices, np.asarray(visual.vertex_colors)[:, :3], "vertex colours")
    return None


def _if_coloured(points, rgb, source: str) -> ScanColours | None:
    if rgb is None or len(rgb) != len(points) or np.all(rgb == DEFAULT_GREY):
        return None
    return ScanColours(np.asarray(points, np.float64), np.asarray(rgb, np.uint8), source)


def _texture_colours(mesh) -> ScanColours | None:
    """Sample the surface and read the base-colour texture at each sample's interpolated UV
    (bilinear, times the material's base colour factor)."""
    import trimesh

    image, factor = _base_colour(mesh.visual.material)
    uv = getattr(mesh.visual, "uv", None)
    if image is None or uv is None or len(uv) != len(mesh.vertices) or len(mesh.faces) == 0:
        return None
    points, face_index = trimesh.sample.sample_surface(mesh, TEXTURE_SAMPLES, seed=0)
    corners = mesh.vertices[mesh.faces[face_index]]
    bary = trimesh.triangles.points_to_barycentric(corners, points)
    texel_uv = (np.asarray(uv, np.float64)[mesh.faces[face_index]] * bary[..., None]).sum(1)
    rgb = _bilinear(image, texel_uv) * factor
    return ScanColours(
        np.asarray(points, np.float64), np.clip(np.round(rgb), 0, 255).astype(np.uint8), "texture"
    )


def _base_colour(material) -> tuple[np.ndarray | None, np.ndarray]:
    """(RGB image as float array, or None; RGB factor) of a PBR or simple material."""
    factor = np.ones(3)
    image = getattr(material, "baseColorTexture", None)
    base = getattr(material, "baseColorFactor", None)
    if base is not None:
        base = np.asarray(base, np.float64)[:3]
        factor = base / 255.0 if base.max() > 1.0 else base
    if image is None:
        image = getattr(material, "image", None)
    if image is None:
        return None, factor
    return np.asarray(image.convert("RGB"), np.float64), factor


def _bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Image values at texture coordinates (v up, wrapping like a repeating texture)."""
    h, w = image.shape[:2]
    x = (uv[:, 0] % 1.0) * w - 0.5
    y = (1.0 - uv[:, 1] % 1.0) * h - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, x1 = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
    y0, y1 = np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1)
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _join_colours(parts: list[ScanColours | None]) -> ScanColours | None:
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    sources = ", ".join(sorted({p.source for p in parts}))
    return ScanColours(np.vstack([p.points for p in parts]), np.vstack([p.rgb for p in parts]), sources)


def _limited(colours: ScanColours | None) -> ScanColours | None:
    """At most MAX_COLOUR_SAMPLES samples (an even random subset), only finite ones."""
    if colours is None:
        return None
    keep = np.isfinite(colours.points).all(1)
    index = np.flatnonzero(keep)
    if len(index) > MAX_COLOUR_SAMPLES:
        index = np.sort(np.random.default_rng(0).choice(index, MAX_COLOUR_SAMPLES, replace=False))
    if len(index) == 0:
        return None
    return ScanColours(colours.points[index], colours.rgb[index], colours.source)


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
