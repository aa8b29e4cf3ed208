"""Synthetic multi-view data of one coloured face, for training and testing the radiance field
offline: ``python -m imface appearance synth --out DIR [--views 24 --size 256 --seed 0]``.

The face comes from the model (a random identity of the checkpoint's code statistics, neutral);
its albedo is procedural and defined on TEMPLATE coordinates (skin tone varying with the seed,
smooth blotches, cheek blush, redder lips, dark brows, eye whites with an iris and pupil), so it
moves with every expression exactly as ImFace's correspondence says. It is synthetic: no photo
of anybody. Images are the ray-cast SDF surface (mesh hit refined onto the SDF) shaded
Lambertian + ambient by a light fixed to the head, so shading changes only where the surface
turns (a held-out expression changes it a little). Written:

    train/ (``views`` cameras on a cap in front of the face), test/ (6 held-out cameras),
    expression/ (the test cameras, the same person with a held-out FaceScape expression),
    transforms_{train,test,expression}.json, codes.json (the true neutral codes),
    codes_expression.json, albedo.json (the albedo's parameters).

Images are RGBA PNGs (alpha = silhouette) over a transparent background, as NeRF-synthetic.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from imface.appearance.render import Camera, orbit, rasterise, refine_hits
from imface.appearance.transforms import write_png, write_transforms
from imface.errors import UserError
from imface.jobs import Job, Progress
from imface.paths import atomic_write_text, check_output_folder

DISTANCE = 3.3  # model units (330 mm) from the point the cameras look at
TARGET = (0.0, 0.05, 0.0)
FIELD_OF_VIEW = 2 * np.arctan(1.1 / DISTANCE)  # the face region (radius 1) fills the frame
LIGHT = np.array([0.35, 0.45, 1.0]) / np.linalg.norm([0.35, 0.45, 1.0])  # head-fixed, front-top-right
AMBIENT = 0.35
TEST_VIEWS = ((-45, -5), (-20, 18), (-8, -12), (12, 8), (30, -15), (52, 12))  # (azimuth, elevation)
DEFAULT_EXPRESSION = "2_smile"


@dataclass
class Albedo:
    """A procedural face albedo over template coordinates (model units, face looking +z)."""

    skin: tuple[float, float, float]
    lips: tuple[float, float, float]
    brows: tuple[float, float, float]
    iris: tuple[float, float, float]
    blush: float
    eye_centres: tuple[tuple[float, float], tuple[float, float]]
    mouth: tuple[float, float, float]  # centre x, centre y, half width
    waves: list  # [(kx, ky, kz, phase, amplitude)] smooth blotches

    @classmethod
    def random(cls, seed: int, template_landmarks: np.ndarray) -> Albedo:
        rng = np.random.default_rng(seed)
        t = rng.uniform(0.0, 1.0)  # light to dark skin
        skin = (1 - t) * np.array([0.92, 0.76, 0.66]) + t * np.array([0.50, 0.33, 0.24])
        lips = skin * np.array([0.85, 0.55, 0.58]) + np.array([0.08, 0.0, 0.0])
        iris = [(0.35, 0.22, 0.12), (0.30, 0.45, 0.65), (0.35, 0.45, 0.30)][int(rng.integers(3))]
        lm = np.asarray(template_landmarks, np.float64)  # eye corners, nose tip, mouth corners
        eyes = tuple((float(c[0] * 0.67), float(c[1] - 0.02)) for c in lm[:2])  # inside the outer corner
        mouth = (float(lm[3:5, 0].mean()), float(lm[3:5, 1].mean()), float(abs(lm[4, 0] - lm[3, 0]) / 2))
        waves = [(*rng.normal(0, 4.0, 3), rng.uniform(0, 2 * np.pi), 0.035) for _ in range(5)]
        return cls(
            tuple(skin), tuple(np.clip(lips, 0, 1)), (0.22, 0.15, 0.11), iris,
            float(rng.uniform(0.15, 0.35)), eyes, mouth, [tuple(map(float, w)) for w in waves],
        )  # fmt: skip

    def __call__(self, template: np.ndarray) -> np.ndarray:
        p = np.asarray(template, np.float64)
        x, y = p[:, 0], p[:, 1]
        rgb = np.tile(np.asarray(self.skin), (len(p), 1))
        rgb *= (
            1 + sum(a * np.sin(p @ np.array([kx, ky, kz]) + ph) for kx, ky, kz, ph, a in self.waves)[:, None]
        )
        for ex, ey in self.eye_centres:
            cheek = np.exp(-((x - ex) ** 2 + (y - ey + 0.42) ** 2) / (2 * 0.12**2))
            rgb = _mix(rgb, (0.86, 0.42, 0.42), self.blush * cheek)
            brow = _band(x, y, ex, ey + 0.17, 0.16, 0.03)
            rgb = _mix(rgb, self.brows, 0.9 * brow)
            white = _ellipse(x, y, ex, ey, 0.10, 0.04)
            rgb = _mix(rgb, (0.93, 0.91, 0.88), white)
            rgb = _mix(rgb, self.iris, white * _ellipse(x, y, ex, ey, 0.04, 0.04))
            rgb = _mix(rgb, (0.05, 0.04, 0.04), white * _ellipse(x, y, ex, ey, 0.017, 0.017))
        mx, my, half = self.mouth
        rgb = _mix(rgb, self.lips, _ellipse(x, y, mx, my, half * 0.95, 0.075))
        return np.clip(rgb, 0.0, 1.0)


def _smooth_step(d: np.ndarray, softness: float = 0.15) -> np.ndarray:
    """1 inside (d < 1 - softness), 0 outside (d > 1), smooth between."""
    return np.clip((1.0 - d) / softness, 0.0, 1.0) ** 2 * (3 - 2 * np.clip((1.0 - d) / softness, 0.0, 1.0))


def _ellipse(x, y, cx, cy, rx, ry):
    return _smooth_step(np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2))


def _band(x, y, cx, cy, half_length, half_height):
    """A brow: an ellipse arched a little upwards at its middle."""
    arch = 0.03 * (1 - ((x - cx) / half_length) ** 2)
    return _ellipse(x, y - arch, cx, cy, half_length, half_height)


def _mix(rgb, colour, weight):
    w = np.asarray(weight, np.float64)[:, None]
    return rgb * (1 - w) + np.asarray(colour, np.float64)[None] * w


# -- ground truth images -------------------------------------------------------------------------------
def render_truth(session, codes, albedo: Albedo, camera: Camera, mesh) -> tuple[np.ndarray, np.ndarray]:
    """Shaded albedo of the true surface (RGB (H, W, 3), silhouette (H, W) of 0/1)."""
    hits = rasterise(mesh.vertices, mesh.faces, camera, cull_back=True)
    rays = np.nonzero(hits.hit)[0]
    directions = camera.directions()[rays]
    model = session.model
    with session.lock:
        prep = model.prepare(session.torch_codes(codes))
        t = refine_hits(lambda p: model.query(p, prep).sdf, camera.centre, directions, hits.t[rays])
        points = torch.from_numpy((camera.centre + t[:, None] * directions).astype(np.float32))
        points.requires_grad_(True)
        out = model.query(points, prep)
        (normal,) = torch.autograd.grad(out.sdf.sum(), points)
    normal = torch.nn.functional.normalize(normal, dim=-1).numpy().astype(np.float64)
    shade = AMBIENT + (1 - AMBIENT) * np.clip(normal @ LIGHT, 0.0, 1.0)
    rgb = np.zeros((camera.width * camera.height, 3))
    rgb[rays] = albedo(out.template.detach().numpy()) * shade[:, None]
    alpha = hits.hit.astype(np.float64)
    return rgb.reshape(camera.height, camera.width, 3), alpha.reshape(camera.height, camera.width)


def train_cameras(count: int, size: int) -> list[Camera]:
    """`count` cameras on a cap in front of the face: 3 rings of elevation, azimuths spread."""
    rings = (-15.0, 5.0, 25.0)
    per_ring = [count // 3 + (1 if i < count % 3 else 0) for i in range(3)]
    az, el = [], []
    for ring, n in zip(rings, per_ring, strict=True):
        az += list(np.linspace(-60.0, 60.0, n) if n > 1 else [0.0])
        el += [ring] * n
    return [Camera.from_fov(m, FIELD_OF_VIEW, size, size) for m in orbit(az, el, DISTANCE, TARGET)]


def test_cameras(size: int) -> list[Camera]:
    az, el = zip(*TEST_VIEWS, strict=True)
    return [Camera.from_fov(m, FIELD_OF_VIEW, size, size) for m in orbit(az, el, DISTANCE, TARGET)]


def synth_job(
    session, out, views: int = 24, size: int = 256, seed: int = 0, expression: str = DEFAULT_EXPRESSION
) -> Job[dict]:
    """Write the train / test / expression image sets of one random synthetic person."""
    from imface.appearance.radiance import shell_mesh
    from imface.session import FaceCodes

    if expression not in session.expression_codes:
        known = ", ".join(session.expression_codes) or "none"
        raise UserError(f"expression {expression!r} is not in this checkpoint (known: {known})")
    if not (1 <= views <= 500 and 8 <= size <= 2048):
        raise UserError("--views must be 1..500 and --size 8..2048")
    out = check_output_folder(out)
    rng = np.random.default_rng(seed)
    neutral = FaceCodes(session.id_space.sample(rng), session.exp_space.mean.copy(), neutral=True)
    smiling = FaceCodes(neutral.z_id.copy(), session.expression_codes[expression].copy(), neutral=False)
    albedo = Albedo.random(seed, session.model.template_landmarks.cpu().numpy())
    sets = [
        ("train", train_cameras(views, size), neutral, {}),
        ("test", test_cameras(size), neutral, {}),
        ("expression", test_cameras(size), smiling, {"imface_expression": expression}),
    ]
    total, done = sum(len(s[1]) for s in sets), 0
    for name, cameras, codes, extra in sets:
        yield Progress("Rendering views", done, total, f"{name}: face mesh")
        mesh = shell_mesh(session, codes)
        files = []
        for i, camera in enumerate(cameras):
            rgb, alpha = render_truth(session, codes, albedo, camera, mesh)
            write_png(out / name / f"r_{i}.png", rgb, alpha)
            files.append(f"./{name}/r_{i}")
            done += 1
            yield Progress("Rendering views", done, total, name)
        write_transforms(out / f"transforms_{name}.json", cameras, files, extra)
    _write_json(out / "codes.json", {**neutral.to_json(), "checkpoint_sha256": session.sha256})
    _write_json(out / "codes_expression.json", {**smiling.to_json(), "expression": expression})
    _write_json(out / "albedo.json", {"synthetic": True, "shading": "Lambertian + ambient", **asdict(albedo)})
    return {"folder": str(out), "views": views, "size": size, "seed": seed, "expression": expression}


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))
