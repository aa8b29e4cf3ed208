"""Multi-view image sets in the NeRF-synthetic layout (``transforms_*.json``), read and written.

    {"camera_angle_x": 0.69,
     "frames": [{"file_path": "./train/r_0", "transform_matrix": [[...4 x 4 camera-to-world...]]}]}

``file_path`` is relative to the JSON file, with or without its extension (NeRF-synthetic leaves
out ".png"). Cameras are OpenGL (looking down -z, y up); the scene is in the model frame (1 unit =
100 mm), or in another unit when the file says ``"unit_mm": 1.0`` (millimetres per scene unit) or
``"scale"`` (model units per scene unit). RGBA images are composited over the background and
their alpha is the silhouette; RGB images have no silhouette. Every problem is one UserError line
naming the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imface.appearance.render import Camera
from imface.errors import UserError
from imface.paths import atomic_output, atomic_write_text, confined, missing_reason
from imface.units import MM_PER_UNIT

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SET_NAMES = ("transforms_train.json", "transforms.json")


@dataclass
class ViewSet:
    """Images and cameras of one transforms file, in the model frame."""

    cameras: list[Camera]
    images: np.ndarray  # (N, H, W, 3) float32 in [0, 1], composited over `background`
    alpha: np.ndarray | None  # (N, H, W) float32 silhouettes, None for RGB images
    files: list[Path]
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    extra: dict = field(default_factory=dict)  # other top-level keys (e.g. "imface_expression")

    def __len__(self) -> int:
        return len(self.cameras)


def find_transforms(images_dir: str | Path) -> Path:
    """The training transforms of a folder (transforms_train.json, else transforms.json), or the
    file itself."""
    path = Path(images_dir)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"{path}: {missing_reason(path)}")
    for name in SET_NAMES:
        if (path / name).is_file():
            return path / name
    raise UserError(f"{path}: no {' or '.join(SET_NAMES)} in this folder")


def read_transforms(path: str | Path, background=(1.0, 1.0, 1.0), load_images: bool = True) -> ViewSet:
    path = Path(path)
    data = _read_json(path)
    angle = _camera_angle(path, data)
    scale = _scene_scale(path, data)
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise UserError(f"{path}: 'frames' must be a non-empty list")
    matrices, files = [], []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise UserError(f"{path}: frame {i} is not an object")
        matrices.append(_matrix(path, i, frame.get("transform_matrix"), scale))
        files.append(_image_file(path, i, frame.get("file_path")))
    images, alpha, (h, w) = (
        _load_images(path, files, background) if load_images else (None, None, _size(data))
    )
    cameras = [Camera.from_fov(m, angle, w, h) for m in matrices]
    extra = {k: v for k, v in data.items() if k not in ("camera_angle_x", "frames")}
    return ViewSet(cameras, images, alpha, files, tuple(float(c) for c in background), extra)


def write_transforms(
    path: str | Path, cameras: list[Camera], file_paths: list[str], extra: dict | None = None
):
    """A NeRF-synthetic transforms file for cameras that share one field of view."""
    frames = [
        {"file_path": f, "transform_matrix": np.asarray(c.c2w).tolist()}
        for f, c in zip(file_paths, cameras, strict=True)
    ]
    data = {"camera_angle_x": cameras[0].camera_angle_x, "w": cameras[0].width, "h": cameras[0].height}
    data.update(extra or {})
    data["frames"] = frames
    return atomic_write_text(path, json.dumps(data, indent=1))


def write_png(path: str | Path, rgb: np.ndarray, alpha: np.ndarray | None = None) -> Path:
    """An 8-bit PNG (RGBA when alpha is given), written atomically."""
    from PIL import Image

    pixels = np.clip(np.round(np.asarray(rgb) * 255), 0, 255).astype(np.uint8)
    if alpha is not None:
        a = np.clip(np.round(np.asarray(alpha) * 255), 0, 255).astype(np.uint8)
        pixels = np.concatenate([pixels, a[..., None]], axis=-1)
    with atomic_output(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return Path(path)


# -- validation ------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = missing_reason(path) if isinstance(exc, OSError) else "not UTF-8 text"
        raise UserError(f"{path}: cannot read the transforms file ({reason})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the transforms file must hold a JSON object")
    return data


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _camera_angle(path: Path, data: dict) -> float:
    angle = _number(data.get("camera_angle_x"))
    if angle is None or not 0.0 < angle < math.pi:
        raise UserError(f"{path}: 'camera_angle_x' must be a field of view in radians in (0, pi)")
    return angle


def _scene_scale(path: Path, data: dict) -> float:
    """Model units per scene unit."""
    if "unit_mm" in data and "scale" in data:
        raise UserError(f"{path}: give 'unit_mm' or 'scale', not both")
    key = "unit_mm" if "unit_mm" in data else "scale" if "scale" in data else None
    if key is None:
        return 1.0
    value = _number(data[key])
    if value is None or value <= 0:
        raise UserError(f"{path}: '{key}' must be a positive number")
    return value / MM_PER_UNIT if key == "unit_mm" else value


def _matrix(path: Path, i: int, value, scale: float) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        m = None
    if m is None or m.shape != (4, 4):
        raise UserError(f"{path}: frame {i}: 'transform_matrix' must be a 4x4 matrix of numbers")
    if not np.isfinite(m).all():
        raise UserError(f"{path}: frame {i}: 'transform_matrix' holds NaN or infinite values")
    rotation = m[:3, :3]
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6) or abs(np.linalg.det(rotation)) < 1e-6:
        raise UserError(f"{path}: frame {i}: 'transform_matrix' is not a camera-to-world rigid transform")
    # cameras may carry a uniform scale (some exporters do): keep rotation, scale the position
    u, _, vt = np.linalg.svd(rotation)
    m = m.copy()
    m[:3, :3] = u @ vt
    m[:3, 3] *= scale
    return m


def _image_file(path: Path, i: int, value) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{path}: frame {i}: 'file_path' must be a non-empty string")
    try:
        base = confined(path.parent, value)
    except UserError as exc:
        raise UserError(f"{path}: frame {i}: {exc}") from None
    candidates = [base] if base.suffix.lower() in IMAGE_SUFFIXES else []
    candidates += [base.with_name(base.name + s) for s in IMAGE_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(f"{path}: frame {i}: image {value!r} not found ({missing_reason(candidates[0])})")


def _size(data: dict) -> tuple[int, int]:
    h, w = data.get("h"), data.get("w")
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        return 0, 0
    return h, w


def _load_images(path: Path, files: list[Path], background):
    from PIL import Image, UnidentifiedImageError

    rgbs, alphas, size = [], [], None
    for f in files:
        try:
            with Image.open(f) as img:
                has_alpha = img.mode in ("RGBA", "LA") or "transparency" in img.info
                pixels = np.asarray(img.convert("RGBA" if has_alpha else "RGB"), np.float32) / 255.0
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise UserError(f"{path}: {f.name}: not a readable image ({exc})") from None
        if size is None:
            size = pixels.shape[:2]
        elif pixels.shape[:2] != size:
            raise UserError(
                f"{path}: {f.name} is {pixels.shape[1]}x{pixels.shape[0]} pixels, "
                f"the first image is {size[1]}x{size[0]}"
            )
        rgb = pixels[..., :3]
        if has_alpha:
            a = pixels[..., 3]
            rgb = rgb * a[..., None] + np.asarray(background, np.float32) * (1 - a[..., None])
            alphas.append(a)
        rgbs.append(rgb)
    if alphas and len(alphas) != len(rgbs):
        raise UserError(f"{path}: some images have an alpha channel (silhouette) and some do not")
    alpha = np.stack(alphas) if alphas else None
    return np.stack(rgbs), alpha, size
