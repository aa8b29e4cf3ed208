"""Colour in template space: an albedo is colour samples at template-space points.

Every face of the model warps to one template space, so colour stored there stays on the same
features through every expression, identity and morph. A scan's colour samples are carried to the
model frame by the fit's alignment, moved onto the fitted surface, and warped to the template by
the fitted codes; any face is coloured by looking its vertices' template coordinates up (k nearest
samples, inverse-distance weights) and fading to a neutral skin albedo where no sample is near.

Stored as safetensors (points float32, colors uint8 sRGB) with JSON metadata, never pickle; a
bad file is one ``UserError`` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imface.errors import UserError
from imface.tagged_file import companion_named, companion_path, load_tagged, save_tagged
from imface.units import MM_PER_UNIT

FORMAT = "imface-albedo/1"
NEUTRAL_RGB = (196, 160, 140)  # sRGB: a light, unsaturated skin tone for faces without colour
RADIUS = 0.03  # template units (3 mm): full colour this close to a sample; neutral at twice it
NEIGHBOURS = 4
MAX_SAMPLES = 200_000  # scan colour samples kept per albedo (about 1 s of template warping)
NEAR_SURFACE_MM = 4.0  # scan colour samples farther from the fitted face (hair, neck) are dropped
TEMPLATE_BOUND = 4.0  # template coordinates live near the unit sphere: larger ones mean a bad file


class NoColourOnFace(UserError):
    """None of a scan's colour samples lies on the fitted face."""


TemplateFn = Callable[[np.ndarray], np.ndarray]  # model-frame points -> template coordinates


@dataclass(eq=False)
class Albedo:
    """Colour samples at template-space points; an empty one is the neutral albedo."""

    points: np.ndarray  # (N, 3) float32 template coordinates
    colors: np.ndarray  # (N, 3) uint8 sRGB
    source: str = ""
    neutral: tuple[int, int, int] = NEUTRAL_RGB
    radius: float | None = None  # None: RADIUS, or twice the samples' typical spacing if larger
    _tree: object = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.points = np.ascontiguousarray(self.points, dtype=np.float32).reshape(-1, 3)
        self.colors = np.ascontiguousarray(self.colors, dtype=np.uint8).reshape(-1, 3)
        if len(self.points) != len(self.colors):
            raise UserError(f"albedo: {len(self.points)} points but {len(self.colors)} colours")
        if self.radius is None:
            self.radius = self._suited_radius()

    def _suited_radius(self) -> float:
        """Sparse samples (a coarse mesh) need a wider reach than dense ones (a scan)."""
        if len(self.points) < 2:
            return RADIUS
        probe = self.points[:: max(1, len(self.points) // 5000)]
        spacing = float(np.median(self.tree.query(probe, k=2)[0][:, 1]))
        return float(min(max(RADIUS, 2.0 * spacing), 0.2))

    @classmethod
    def neutral_albedo(cls) -> Albedo:
        return cls(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), "neutral")

    @property
    def is_neutral(self) -> bool:
        return len(self.points) == 0

    def describe(self) -> str:
        if self.is_neutral:
            return "neutral albedo (no colour)"
        origin = f" from {self.source}" if self.source else ""
        return f"{len(self.points)} colour samples{origin}"

    def lookup(self, template: np.ndarray) -> np.ndarray:
        """(M, 3) uint8 sRGB colours at template coordinates."""
        template = np.asarray(template, np.float32).reshape(-1, 3)
        neutral = np.broadcast_to(np.asarray(self.neutral, np.float32), template.shape)
        if self.is_neutral or len(template) == 0:
            return np.round(neutral).astype(np.uint8)
        k = min(NEIGHBOURS, len(self.points))
        distance, index = self.tree.query(template, k=k)
        distance, index = distance.reshape(len(template), k), index.reshape(len(template), k)
        weights = 1.0 / np.maximum(distance, 1e-4) ** 2
        weights /= weights.sum(1, keepdims=True)
        rgb = (self.colors[index].astype(np.float32) * weights[..., None]).sum(1)
        # full colour within `radius` of a sample, fading to neutral at twice that
        cover = np.clip(2.0 - distance[:, 0] / self.radius, 0.0, 1.0)[:, None]
        return np.clip(np.round(cover * rgb + (1 - cover) * neutral), 0, 255).astype(np.uint8)

    @property
    def tree(self):
        if self._tree is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.points)
        return self._tree

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | Path, info: dict | None = None) -> Path:
        """Write atomically as safetensors (+ JSON metadata: format, neutral, radius, source)."""
        meta = {"source": self.source, "neutral": list(self.neutral), "radius": self.radius}
        meta.update(info or {})
        return save_tagged(path, FORMAT, "albedo", meta, {"points": self.points, "colors": self.colors})

    @classmethod
    def load(cls, path: str | Path) -> Albedo:
        """Read and check an albedo file; every problem is one UserError line naming the file."""
        meta, tensors = load_tagged(path, FORMAT, "albedo", "an albedo file")
        return _checked(Path(path), tensors, meta)


def _checked(path: Path, tensors: dict, meta: dict) -> Albedo:
    points, colors = tensors.get("points"), tensors.get("colors")
    if points is None or colors is None:
        raise UserError(f"{path}: albedo file lacks 'points' or 'colors'")
    if points.dtype != np.float32 or points.ndim != 2 or points.shape[1] != 3:
        raise UserError(f"{path}: albedo points must be (N, 3) float32, got {points.shape} {points.dtype}")
    if colors.dtype != np.uint8 or colors.shape != points.shape:
        raise UserError(f"{path}: albedo colours must be (N, 3) uint8 like the points, got {colors.shape}")
    if not np.isfinite(points).all() or (len(points) and np.abs(points).max() > TEMPLATE_BOUND):
        raise UserError(
            f"{path}: albedo points must be finite template coordinates (|x| <= {TEMPLATE_BOUND})"
        )
    neutral = meta.get("neutral", list(NEUTRAL_RGB))
    radius = meta.get("radius", RADIUS)
    valid_neutral = isinstance(neutral, list) and len(neutral) == 3
    if not valid_neutral or not all(isinstance(c, int) and 0 <= c <= 255 for c in neutral):
        raise UserError(f"{path}: albedo 'neutral' must be three integers 0-255")
    if not isinstance(radius, (int, float)) or not 0 < radius <= 1:
        raise UserError(f"{path}: albedo 'radius' must be a number in (0, 1] template units")
    return Albedo(points, colors, str(meta.get("source", "")), tuple(neutral), float(radius))


# -- from a coloured scan ------------------------------------------------------------------------
def transfer_colours(
    points_model: np.ndarray,
    rgb: np.ndarray,
    fitted_vertices_model: np.ndarray,
    fitted_faces: np.ndarray,
    template_fn: TemplateFn,
    source: str = "",
    seed: int = 0,
) -> Albedo:
    """An albedo from colour samples of a scan (model frame, after the fit's alignment): samples
    near the fitted face are moved onto it along its normals and warped to the template."""
    from scipy.spatial import cKDTree

    from imface.extract.repair import vertex_normals

    points_model = np.asarray(points_model, np.float64).reshape(-1, 3)
    rgb = np.asarray(rgb, np.uint8).reshape(-1, 3)
    if len(points_model) > MAX_SAMPLES:
        keep = np.sort(np.random.default_rng(seed).choice(len(points_model), MAX_SAMPLES, replace=False))
        points_model, rgb = points_model[keep], rgb[keep]
    vertices = np.asarray(fitted_vertices_model, np.float64)
    normals = vertex_normals(vertices, fitted_faces)
    nearest, idx = cKDTree(vertices).query(points_model)
    along = ((points_model - vertices[idx]) * normals[idx]).sum(-1)
    near = nearest * MM_PER_UNIT < NEAR_SURFACE_MM
    if not near.any():
        raise NoColourOnFace("no colour of the scan lies on the fitted face: nothing to transfer")
    on_surface = points_model[near] - along[near, None] * normals[idx[near]]
    template = np.asarray(template_fn(on_surface.astype(np.float32)), np.float32)
    return Albedo(template, rgb[near], source)


def colours_for(template_fn: TemplateFn, vertices_model: np.ndarray, albedo: Albedo) -> np.ndarray:
    """Per-vertex sRGB uint8 of a face of the model: its template coordinates looked up."""
    if albedo.is_neutral:
        return albedo.lookup(np.zeros((len(vertices_model), 3), np.float32))
    return albedo.lookup(template_fn(np.asarray(vertices_model, np.float32)))


def albedo_path_for_codes(codes_path: str | Path) -> Path:
    """Where `fit --codes C.json` puts the albedo: C.albedo.safetensors beside it."""
    return companion_path(codes_path, "albedo")


def albedo_for_codes(codes_path: str | Path) -> Albedo | None:
    """The albedo a codes JSON names ("albedo": a file beside it), else None."""
    path = companion_named(codes_path, "albedo")
    return None if path is None else Albedo.load(path)
