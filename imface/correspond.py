"""Dense correspondence through template space, and texture painting.

Every face of the model warps to the shared template space (p'' = I(E(p))). Two faces correspond
where their template coordinates meet, so colouring vertices by a function of their template
coordinates paints one texture that follows every morph and every fitted face.

``python -m imface correspond A B --out DIR``: A and B are codes JSON files (from ``fit --codes``)
or scans (fitted first); writes both meshes coloured by template coordinates and the mapping.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from imface.appearance.albedo import Albedo
from imface.errors import UserError
from imface.model import Codes, ImFace
from imface.paths import atomic_output, atomic_write_text

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


# -- CLI -------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    from imface.io import DEFAULT_CHECKPOINT

    parser.add_argument("a", help="codes JSON (fit --codes) or a scan to fit")
    parser.add_argument("b", help="codes JSON (fit --codes) or a scan to fit")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--pattern", default="template", help=f"{', '.join(PATTERNS)} or an image file")
    parser.add_argument("--resolution", type=int, default=128)


def load_codes_json(path: str | Path, checkpoint) -> Codes:
    try:
        data = json.loads(Path(path).read_text())
        z_id = torch.tensor(data["z_id"], dtype=torch.float32)
        z_exp = torch.tensor(data["z_exp"], dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a codes file ({exc})") from None
    cfg = checkpoint.config
    if z_id.shape != (cfg.id_dim,) or z_exp.shape != (cfg.exp_dim,):
        raise UserError(f"{path}: codes do not fit this checkpoint ({cfg.id_dim}/{cfg.exp_dim} dims)")
    return Codes(z_id, z_exp, torch.tensor([bool(data.get("neutral", False))]))


def _face(path: str, checkpoint, resolution: int):
    """(codes, mesh in the model frame) for a codes file or a scan."""
    from imface.extract import face_mesh

    if Path(path).suffix.lower() == ".json":
        codes = load_codes_json(path, checkpoint)
    else:
        from imface.fit.scan import fit_scan

        codes = fit_scan(checkpoint, path, resolution=resolution).codes
    mesh = face_mesh(checkpoint.model, codes, resolution)
    return codes, mesh


def run(args) -> int:
    from imface.io import load_checkpoint, save_mesh

    checkpoint = load_checkpoint(args.checkpoint)
    image = None if args.pattern in PATTERNS else load_texture(args.pattern)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    faces = []
    for name, path in (("a", args.a), ("b", args.b)):
        codes, mesh = _face(path, checkpoint, args.resolution)
        template = template_coordinates(checkpoint.model, codes, mesh.vertices)
        save_mesh(out / f"{name}.ply", mesh.vertices, mesh.faces, paint(template, args.pattern, image))
        faces.append(template)
    index, distance = correspondence(faces[0], faces[1])
    with atomic_output(out / "a_to_b.npy") as tmp:
        np.save(tmp, index)
    summary = {"vertices_a": len(faces[0]), "vertices_b": len(faces[1])}
    summary["median_template_distance_mm"] = float(np.median(distance) * 100)
    atomic_write_text(out / "mapping.json", json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


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
