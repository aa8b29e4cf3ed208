"""Dense correspondence through template space, and texture painting.

Every face of the model warps to the shared template space (p'' = I(E(p))). Two faces correspond
where their template coordinates meet, so colouring vertices by a function of their template
coordinates paints one texture that follows every morph and every fitted face.

``python -m imface correspond A B --out DIR`` (imface/commands.py): A and B are codes JSON files
(from ``fit --codes``) or scans (fitted first); writes both meshes coloured by template
coordinates and the mapping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from imface.appearance.albedo import Albedo
from imface.errors import UserError
from imface.model import Codes, ImFace

PATTERNS = ("template", "checker", "uv-grid")


def template_coordinates(model: ImFace, codes: Codes, vertices: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Template-space position of each vertex of a face with these codes."""
    prep = model.prepare(codes)
    device = model.template_landmarks.device
    points = torch.from_numpy(np.asarray(vertices, dtype=np.float32))
    out = []
    with torch.no_grad():
        for start in range(0, len(points), chunk):
            out.append(
                model.query(points[start : start + chunk].to(device), prep, detail=False).template.cpu()
            )
    return torch.cat(out).numpy() if out else np.zeros((0, 3), np.float32)


def frontal_uv(template: np.ndarray) -> np.ndarray:
    """A texture coordinate on the template: frontal projection of the unit sphere to [0, 1]^2."""
    return np.clip((np.asarray(template)[:, :2] + 1.0) * 0.5, 0.0, 1.0)


def paint(template: np.ndarray, pattern: str = "template", image: np.ndarray | None = None, cells: int = 12):
    """Per-vertex RGB in [0, 1] from template coordinates.

    pattern: "template" (xyz -> rgb), "checker", "uv-grid" (lines on a light background), or an
    RGB(A) image array (H, W, C) sampled at the frontal UV.
    """
    template = np.asarray(template, dtype=np.float64)
    if image is not None:
        return _sample_image(image, frontal_uv(template))
    if pattern == "template":
        return np.clip((template + 1.0) * 0.5, 0.0, 1.0)
    uv = frontal_uv(template) * cells
    if pattern == "checker":
        on = (np.floor(uv[:, 0]) + np.floor(uv[:, 1])) % 2 == 0
        return np.where(on[:, None], [0.92, 0.92, 0.92], [0.18, 0.35, 0.65])
    if pattern == "uv-grid":
        distance = np.minimum(np.abs(uv - np.round(uv)), 0.5).min(axis=1)
        line = distance < 0.06
        base = np.column_stack([uv[:, 0] / cells, uv[:, 1] / cells, np.full(len(uv), 0.8)]) * 0.4 + 0.55
        return np.where(line[:, None], [0.1, 0.1, 0.1], base)
    raise UserError(f"unknown pattern {pattern!r} (choose {', '.join(PATTERNS)} or an image)")


def _sample_image(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    h, w = image.shape[:2]
    cols = np.clip(np.round(uv[:, 0] * (w - 1)), 0, w - 1).astype(int)
    rows = np.clip(np.round((1.0 - uv[:, 1]) * (h - 1)), 0, h - 1).astype(int)  # image rows go down
    rgb = image[rows, cols, :3].astype(np.float64)
    return rgb / 255.0 if image.dtype == np.uint8 else rgb


def load_texture(path: str | Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from None


def correspondence(template_a: np.ndarray, template_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each point of A, the index of its nearest point of B in template space, and that
    template-space distance (large distances mean "no counterpart")."""
    distance, index = cKDTree(np.asarray(template_b)).query(np.asarray(template_a))
    return index, distance


def match_vertex(template_a: np.ndarray, index: int, template_b: np.ndarray) -> int:
    """Index of B's vertex that corresponds to vertex `index` of A (nearest in template space)."""
    idx, _ = correspondence(template_a[index : index + 1], template_b)
    return int(np.asarray(idx).reshape(-1)[0])


PAINT_MODES = {"coords": "template", "checker": "checker", "uv": "uv-grid"}


def paint_colors(
    template: np.ndarray, mode: str, image: np.ndarray | None = None, albedo: Albedo | None = None
) -> np.ndarray:
    """Per-vertex RGB uint8 painted in template space: 'coords', 'checker', 'uv', 'image' or
    'albedo' (a face's own colour; neutral without one)."""
    if mode == "albedo":
        return (albedo or Albedo.neutral_albedo()).lookup(template)
    if mode == "image":
        if image is None:
            raise UserError("painting with an image needs an image")
        rgb = paint(template, image=image)
    elif mode in PAINT_MODES:
        rgb = paint(template, PAINT_MODES[mode])
    else:
        raise UserError(f"unknown paint mode {mode!r} (use coords, checker, uv, image or albedo)")
    return np.clip(np.round(np.asarray(rgb)[:, :3] * 255), 0, 255).astype(np.uint8)
