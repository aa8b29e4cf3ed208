"""A NeRFlame-style radiance field on ImFace: density from the SDF in a thin shell around the
surface, colour from a small network over template coordinates (so it follows the codes).

    job = train_job("faces/anna", session, codes, "anna.appearance")   # imface.appearance.training
    result = drive_with_tqdm(job)
    field = load_appearance("anna.appearance", session)
    image, alpha = field.render(session, field.codes, camera)

Training reads a NeRF-synthetic image set (``imface.appearance.transforms``), rasterises the face
mesh of the current codes once per view to centre every ray's shell (``imface.appearance.render``),
then fits the colour network to random ray batches with a photometric MSE and, where the images
carry alpha, a silhouette BCE. The codes can be refined jointly (small learning rate, the network
frozen); rays then follow the moving surface through their shells' expected depth. ``space =
"observation"`` is the ablation that colours observation-space points instead.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from imface.appearance.render import Camera, Shell, rasterise, render_image, shell_centres
from imface.errors import UserError
from imface.jobs import Job, Progress
from imface.model.layers import encoded_size, positional_encoding
from imface.paths import atomic_output, atomic_write_text, check_output_folder

SPACES = ("template", "observation")
FORMAT = "imface-appearance"
WEIGHTS, CONFIG = "colour.safetensors", "appearance.json"
MESH_RESOLUTION = 128  # the mesh that centres the shells: 1.6 mm cells, well inside the shell


@dataclass
class FieldConfig:
    space: str = "template"  # colour over template coordinates, or "observation" (ablation)
    # tri-plane features over the unit cube (xy, xz, yz planes): a fine texture that trains in
    # minutes on a CPU, where a plain coordinate MLP needs far more steps for the same detail
    plane_resolution: int = 0  # texels per side (256: 0.8 mm); 0: about the training pixel size
    plane_channels: int = 8
    frequencies: int = 2  # positional encoding of the coordinates beside the features
    width: int = 64
    layers: int = 2
    view_dependent: bool = True  # the view direction enters the last layer
    # start from the training images projected onto the face (vertex colours looked up at the
    # colour coordinates) and learn a correction on top: the field begins where the projection
    # baseline ends instead of at grey, and the photometric loss only has the residual to learn
    projected_base: bool = True
    # colour steps and rendering: a sharp shell (about 0.03 mm soft edge, 16 samples) on the rays
    # that hit the mesh, so edges and features are as crisp as the mesh; code refinement needs
    # the soft shell with a silhouette band instead (gradients reach the surface's position)
    shell: Shell = dataclasses.field(default_factory=lambda: Shell(samples=16, sharpness=3200.0, band_px=0))
    refine_shell: Shell = dataclasses.field(default_factory=Shell)
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def validate(self) -> FieldConfig:
        if self.space not in SPACES:
            raise UserError(f"colour space must be one of {', '.join(SPACES)}, not {self.space!r}")
        sizes = (self.plane_resolution, self.plane_channels, self.frequencies, self.width, self.layers)
        if not all(lo <= v <= hi for v, (lo, hi) in zip(sizes, _SIZE_LIMITS, strict=True)):
            raise UserError(
                "field size out of range (planes 0..1024 x 1..64, frequencies 0..12, "
                "width 1..1024, layers 1..8)"
            )
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FieldConfig:
        d = dict(d)
        d["shell"] = Shell(**d.get("shell", {}))
        d["refine_shell"] = Shell(**d.get("refine_shell", {}))
        d["background"] = tuple(float(c) for c in d.get("background", (1, 1, 1)))
        d.setdefault("projected_base", False)  # folders written before the base existed
        return cls(**d).validate()


_SIZE_LIMITS = ((0, 1024), (1, 64), (0, 12), (1, 1024), (1, 8))
_PLANE_AXES = ((0, 1), (0, 2), (1, 2))


class ColourNet(nn.Module):
    """Tri-plane features + encoded coordinates -> ReLU MLP -> (+ view direction) -> sRGB; with a
    base (`set_base`), the MLP's output is a correction (in logits) to the base colour, the
    inverse-distance mean of the base colours of the 4 base points nearest in colour space."""

    BASE_NEIGHBOURS = 4

    def __init__(self, cfg: FieldConfig):
        super().__init__()
        self.frequencies = cfg.frequencies
        r, c = cfg.plane_resolution, cfg.plane_channels
        self.planes = nn.Parameter(0.01 * torch.randn(3, c, r, r))
        dims = [encoded_size(3, cfg.frequencies) + 3 * c] + [cfg.width] * cfg.layers
        self.trunk = nn.Sequential(
            *[m for a, b in zip(dims[:-1], dims[1:], strict=True) for m in (nn.Linear(a, b), nn.ReLU())]
        )
        self.view_dependent = cfg.view_dependent
        head_in = cfg.width + (3 if cfg.view_dependent else 0)
        self.head = nn.Sequential(nn.Linear(head_in, cfg.width // 2), nn.ReLU(), nn.Linear(cfg.width // 2, 3))
        self.register_buffer("base_points", torch.zeros(0, 3))
        self.register_buffer("base_colours", torch.zeros(0, 3))
        self._base_tree = None

    def set_base(self, points, colours, zero_correction: bool = True):
        """Base colours (N, 3, in 0..1) at points of the colour coordinates (N, 3). With
        `zero_correction` the network's output starts at exactly the base colour."""
        from scipy.spatial import cKDTree

        points = np.asarray(points, np.float32)
        colours = np.clip(np.asarray(colours, np.float32), 0.0, 1.0)
        if points.ndim != 2 or points.shape[1] != 3 or colours.shape != points.shape or not len(points):
            raise UserError("the colour base needs matching (N, 3) points and colours")
        self.base_points = torch.from_numpy(points)
        self.base_colours = torch.from_numpy(colours)
        self._base_tree = cKDTree(points)
        if zero_correction:
            with torch.no_grad():
                self.head[-1].weight.zero_()
                self.head[-1].bias.zero_()

    @property
    def has_base(self) -> bool:
        return len(self.base_points) > 0

    def base(self, coords: Tensor) -> Tensor:
        if self._base_tree is None:  # loaded from a file
            self.set_base(self.base_points.numpy(), self.base_colours.numpy(), zero_correction=False)
        k = min(self.BASE_NEIGHBOURS, len(self.base_points))
        distance, nearest = self._base_tree.query(coords.detach().numpy().astype(np.float64), k=k)
        distance, nearest = distance.reshape(len(coords), k), nearest.reshape(len(coords), k)
        weight = 1.0 / np.maximum(distance, 1e-6)
        weight /= weight.sum(1, keepdims=True)
        colours = (self.base_colours.numpy()[nearest] * weight[..., None]).sum(1)
        return torch.from_numpy(colours.astype(np.float32))

    def features(self, coords: Tensor) -> Tensor:
        """Bilinear samples of the three planes at the coordinates' projections, (N, 3 C)."""
        grid = torch.stack([coords[:, list(axes)] for axes in _PLANE_AXES])[:, None]  # (3, 1, N, 2)
        sampled = nn.functional.grid_sample(self.planes, grid, align_corners=False, padding_mode="border")
        return sampled[:, :, 0].permute(2, 0, 1).reshape(coords.shape[0], -1)

    def forward(self, coords: Tensor, directions: Tensor) -> Tensor:
        h = torch.cat([self.features(coords), positional_encoding(coords, self.frequencies)], dim=-1)
        h = self.trunk(h)
        if self.view_dependent:
            h = torch.cat([h, directions], dim=-1)
        correction = self.head(h)
        if self.has_base:
            return torch.sigmoid(torch.logit(self.base(coords), eps=1e-3) + correction)
        return torch.sigmoid(correction)


def face_surface(model, prep, space: str = "template"):
    """SurfaceFn of one prepared ImFace face: SDF and the coordinates colour is a function of."""

    def surface(points: Tensor) -> tuple[Tensor, Tensor]:
        out = model.query(points, prep)
        return out.sdf, out.template if space == "template" else points

    return surface


def shell_mesh(session, codes):
    """The face mesh that centres the shells, oriented outward (for back-face culling)."""
    mesh = session.extract(codes, MESH_RESOLUTION)
    faces = mesh.faces
    v = mesh.vertices[faces]
    normal = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    probe = np.random.default_rng(0).choice(len(faces), min(500, len(faces)), replace=False)
    centre = v[probe].mean(1)
    step = 0.005 * normal[probe]
    with session.lock, torch.no_grad():
        prep = session.model.prepare(session.torch_codes(codes))
        outside = session.model.query(torch.from_numpy((centre + step).astype(np.float32)), prep).sdf
        inside = session.model.query(torch.from_numpy((centre - step).astype(np.float32)), prep).sdf
    if float((outside - inside).mean()) < 0:
        mesh = type(mesh)(mesh.vertices, faces[:, ::-1].copy())
    return mesh


def view_centres(mesh, cameras: list[Camera], shell: Shell) -> list[np.ndarray]:
    """Per view, every pixel's shell centre (NaN: background only)."""
    return [
        shell_centres(rasterise(mesh.vertices, mesh.faces, cam, cull_back=True), cam, shell.band_px)
        for cam in cameras
    ]


@dataclass
class RadianceField:
    """A trained colour network with its config and the codes it was trained at."""

    net: ColourNet
    config: FieldConfig
    codes: object  # imface.session.FaceCodes
    info: dict = dataclasses.field(default_factory=dict)

    def render(self, session, codes, camera: Camera, mesh=None) -> tuple[np.ndarray, np.ndarray]:
        """An image (H, W, 3) and its opacity of the face with these codes."""
        mesh = mesh if mesh is not None else shell_mesh(session, codes)
        (centres,) = view_centres(mesh, [camera], self.config.shell)
        with session.lock, torch.no_grad():
            prep = session.model.prepare(session.torch_codes(codes))
            surface = face_surface(session.model, prep, self.config.space)
            return render_image(surface, self.net, camera, centres, self.config.shell, self.config.background)


@dataclass
class AppearanceResult:
    folder: Path
    field: RadianceField
    report: dict


# -- files ----------------------------------------------------------------------------------------
def save_appearance(folder, field: RadianceField, initial_codes=None) -> Path:
    """Weights first, then the JSON: a reader that finds the JSON finds matching weights."""
    from safetensors.torch import save_file

    folder = Path(folder)
    with atomic_output(folder / WEIGHTS) as tmp:
        save_file({k: v.detach().contiguous() for k, v in field.net.state_dict().items()}, str(tmp))
    data = {
        "format": FORMAT,
        "version": 1,
        "field": field.config.to_dict(),
        "codes": field.codes.to_json(),
        "initial_codes": None if initial_codes is None else initial_codes.to_json(),
        "train": field.info,
    }
    atomic_write_text(folder / CONFIG, json.dumps(data, indent=1))
    return folder


def load_appearance(folder, session=None) -> RadianceField:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from imface.session import FaceCodes

    folder = Path(folder)
    path = folder / CONFIG
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"not an {FORMAT} file")
        cfg = FieldConfig.from_dict(data["field"])
        codes = FaceCodes.from_json(data["codes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a readable appearance ({exc})") from None
    net = ColourNet(cfg)
    try:
        weights = load_file(str(folder / WEIGHTS))
        for name in ("base_points", "base_colours"):  # folders written before the base existed
            weights.setdefault(name, torch.zeros(0, 3))
        if len(weights.get("base_points", ())):
            base = weights["base_points"].numpy(), weights["base_colours"].numpy()
            net.set_base(*base, zero_correction=False)
        net.load_state_dict(weights)
    except (OSError, SafetensorError, RuntimeError, UserError) as exc:
        raise UserError(f"{folder / WEIGHTS}: weights do not load ({str(exc).splitlines()[0]})") from None
    if session is not None and codes.z_id.shape != (session.id_dim,):
        raise UserError(
            f"{path}: codes of a {codes.z_id.shape[0]}-dim model, the checkpoint has {session.id_dim}"
        )
    return RadianceField(net.eval(), cfg, codes, data.get("train", {}))


# -- rendering ------------------------------------------------------------------------------------
def expression_faces(field: RadianceField, session, names: str) -> dict[str, object]:
    """'neutral' (the trained codes), 'all' (neutral + every FaceScape expression of the
    checkpoint) or comma-separated expression names -> FaceCodes of the trained person."""
    from imface.session import FaceCodes

    known = session.expression_codes
    wanted = ["neutral", *known] if names == "all" else [n.strip() for n in names.split(",") if n.strip()]
    faces = {}
    for name in wanted:
        if name in ("neutral", "1_neutral"):
            faces[name] = field.codes
        elif name in known:
            faces[name] = FaceCodes(field.codes.z_id.copy(), known[name].copy(), neutral=False)
        else:
            raise UserError(f"unknown expression {name!r} (use neutral, all or one of: {', '.join(known)})")
    return faces


def render_job(field: RadianceField, session, cameras: list[Camera], faces: dict, out) -> Job[dict]:
    """Render every face (name -> codes) from every camera into out/NAME/r_I.png."""
    from imface.appearance.transforms import write_png
    from imface.paths import safe_name

    out = check_output_folder(out)
    total, done, seconds = len(faces) * len(cameras), 0, []
    for name, codes in faces.items():
        yield Progress("Rendering", done, total, f"{name}: face mesh")
        mesh = shell_mesh(session, codes)
        for i, camera in enumerate(cameras):
            start = time.perf_counter()
            rgb, alpha = field.render(session, codes, camera, mesh)
            seconds.append(time.perf_counter() - start)
            write_png(out / safe_name(name) / f"r_{i}.png", rgb, alpha)
            done += 1
            yield Progress("Rendering", done, total, name)
    summary = {
        "images": total,
        "faces": list(faces),
        "size": [cameras[0].width, cameras[0].height] if cameras else None,
        "seconds_per_image": round(float(np.mean(seconds)), 3) if seconds else 0.0,
    }
    atomic_write_text(out / "render.json", json.dumps(summary, indent=1))
    return summary
