"""The ImFace / ImFace++ network.

    f(p) = T( I''( E(p, z_exp), z_id ) ) + delta( E(p, z_exp), z_id )      [+ ImFace++ detail]

ExpNet E warps an observed (expressive) point to the person's neutral space, IDNet I warps that to
the shared template space and predicts an SDF correction delta, TempNet T is the template SDF.
All three are Neural Blend-Fields over 5 landmarks: the observed face's (predicted by eta from
z_exp, z_id), the neutral face's (eta' from z_id) and the fixed template landmarks.

A batch holds points of many scans; each point carries its scan index and codes are gathered per
scan. Use `prepare(codes)` once and `query(...)` many times when evaluating the same faces in chunks
(mesh extraction, fitting); `forward` does both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from imface.config import ModelConfig
from imface.model.backbone import LinearBackbone, LinearFaces
from imface.model.basis import ShapeBasis
from imface.model.blend import HyperBlendField, StaticBlendField
from imface.model.layers import (
    ScanGroups,
    encoded_size,
    positional_encoding,
    run_siren,
    siren_init_,
    siren_layer_shapes,
)
from imface.model.warp import apply_warp, warp_channels

# Blend landmarks in the model frame (100 mm units, nose tip at (0, 0, 0.4)): outer eye corners,
# nose tip, mouth corners. Replaced by the training set's mean landmarks when a model is trained.
DEFAULT_TEMPLATE_LANDMARKS = (
    (-0.45, 0.35, 0.05),
    (0.45, 0.35, 0.05),
    (0.0, 0.0, 0.4),
    (-0.25, -0.35, 0.15),
    (0.25, -0.35, 0.15),
)


@dataclass
class Codes:
    """Latent codes of S faces. `neutral[s]` makes ExpNet the identity for face s."""

    z_id: Tensor  # (S, id_dim)
    z_exp: Tensor  # (S, exp_dim)
    neutral: Tensor | None = None  # (S,) bool; None = no neutral faces
    z_detail: Tensor | None = None  # (S, detail_dim), ImFace++ only

    def __post_init__(self):
        if self.z_id.dim() == 1:
            self.z_id = self.z_id[None]
        if self.z_exp.dim() == 1:
            self.z_exp = self.z_exp[None]
        if self.z_detail is not None and self.z_detail.dim() == 1:
            self.z_detail = self.z_detail[None]
        if self.neutral is None:
            self.neutral = torch.zeros(self.z_id.shape[0], dtype=torch.bool, device=self.z_id.device)
        self.neutral = torch.as_tensor(self.neutral, dtype=torch.bool, device=self.z_id.device)
        self.neutral = self.neutral.reshape(-1)
        if not (self.z_id.shape[0] == self.z_exp.shape[0] == self.neutral.shape[0]):
            raise ValueError("z_id, z_exp and neutral must describe the same number of faces")

    @property
    def num_faces(self) -> int:
        return self.z_id.shape[0]

    @classmethod
    def zeros(cls, config: ModelConfig, faces: int = 1, device="cpu") -> Codes:
        detail = torch.zeros(faces, config.detail_dim, device=device) if config.detail else None
        return cls(
            torch.zeros(faces, config.id_dim, device=device),
            torch.zeros(faces, config.exp_dim, device=device),
            None,
            detail,
        )


@dataclass
class PreparedCodes:
    """Everything that depends on the codes only: generated weights and predicted landmarks."""

    codes: Codes
    expressive: Tensor  # indices of faces that go through ExpNet
    exp_layers: list[tuple[Tensor, Tensor]]  # for the expressive faces only
    id_layers: list[tuple[Tensor, Tensor]]
    exp_landmarks: Tensor  # (S, 5, 3) l: landmarks of the observed face
    neutral_landmarks: Tensor  # (S, 5, 3) l': landmarks of the neutral face
    linear: LinearFaces | None = None  # the linear faces of the codes (linear_backbone)


@dataclass
class ImFaceOutput:
    """One forward: the SDF and what the losses and correspondence need. Point tensors are (N, ...)."""

    sdf: Tensor  # final SDF (with correction, and detail when on)
    coarse_sdf: Tensor  # template SDF + correction, before the detail field
    template_sdf: Tensor  # s0 = T(p'')
    correction: Tensor  # delta
    canonical: Tensor  # p' = E(p): the person's neutral space
    template: Tensor  # p'' = I(p'): template space
    exp_landmarks: Tensor  # (S, 5, 3)
    neutral_landmarks: Tensor  # (S, 5, 3)
    detail: Tensor | None = None  # displacement r along the normal (ImFace++)
    neutral_displacement: Tensor | None = None  # ExpNet(p) - p on neutral faces' points
    extras: dict = field(default_factory=dict)


class LandmarkNet(nn.Module):
    """eta / eta': code -> 5 landmarks, as offsets from the template landmarks (zero at init)."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], n_landmarks: int):
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden]
        for i in range(len(dims) - 1):
            layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
        last = nn.Linear(dims[-1], n_landmarks * 3)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        self.n_landmarks = n_landmarks

    def forward(self, code: Tensor, base: Tensor) -> Tensor:
        return base + self.net(code).view(-1, self.n_landmarks, 3)


class DetailField(nn.Module):
    """ImFace++ refinement field g(p'', z_detail) in template space: a SIREN on the encoded template
    position and the scan's detail code, last layer zero (no displacement at init)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.frequencies = cfg.detail_frequencies
        self.omega0 = cfg.siren_omega0
        in_dim = encoded_size(3, cfg.detail_frequencies) + cfg.detail_dim
        shapes = siren_layer_shapes(in_dim, cfg.detail_width, cfg.detail_hidden_layers, 1)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for k, (out_f, in_f) in enumerate(shapes):
            w, b = torch.empty(1, out_f, in_f), torch.empty(1, out_f)
            siren_init_(w, b, first=k == 0, omega0=self.omega0)
            if k == len(shapes) - 1:
                w.zero_()
                b.zero_()
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))

    def forward(self, template_points: Tensor, z_detail: Tensor) -> Tensor:
        """template_points (S, P, 3), z_detail (S, D) -> g (S, P)."""
        encoded = positional_encoding(template_points, self.frequencies)
        code = z_detail[:, None, :].expand(-1, template_points.shape[1], -1)
        h = torch.cat([encoded, code], dim=-1).unsqueeze(1)  # one group
        layers = list(zip(self.weights, self.biases, strict=True))
        return run_siren(h, layers, self.omega0)[:, 0, :, 0]


class ImFace(nn.Module):
    def __init__(self, config: ModelConfig | None = None, template_landmarks: Tensor | None = None):
        super().__init__()
        cfg = config or ModelConfig()
        cfg.validate()
        self.config = cfg
        if template_landmarks is None:
            template_landmarks = torch.tensor(DEFAULT_TEMPLATE_LANDMARKS, dtype=torch.float32)
        if template_landmarks.shape != (cfg.n_landmarks, 3):
            raise ValueError(f"template landmarks must be ({cfg.n_landmarks}, 3)")
        self.register_buffer("template_landmarks", template_landmarks.float().clone())

        warp_out = warp_channels(cfg.deformation)
        local = dict(
            n_landmarks=cfg.n_landmarks,
            width=cfg.siren_width,
            hidden_layers=cfg.siren_hidden_layers,
            omega0=cfg.siren_omega0,
            frequencies=cfg.positional_encoding,
            fusion_width=cfg.fusion_width,
        )
        hyper = dict(
            hyper_hidden=cfg.hyper_hidden, out_scale=cfg.hyper_out_scale, split_codes=cfg.split_codes
        )
        self.exp_field = HyperBlendField(cfg.exp_dim, out_dim=warp_out, **local, **hyper)
        self.id_field = HyperBlendField(cfg.id_dim, out_dim=warp_out + 1, **local, **hyper)
        self.template_field = StaticBlendField(out_dim=1, **local)
        self.exp_landmark_net = LandmarkNet(cfg.exp_dim + cfg.id_dim, cfg.landmark_hidden, cfg.n_landmarks)
        self.id_landmark_net = LandmarkNet(cfg.id_dim, cfg.landmark_hidden, cfg.n_landmarks)
        self.detail_field = DetailField(cfg) if cfg.detail else None
        self.backbone: LinearBackbone | None = None  # set by attach_basis (linear_backbone)

    def attach_basis(self, basis: ShapeBasis | None) -> None:
        """Build the linear backbone from the checkpoint's bases (a no-op without linear_backbone)."""
        if not self.config.linear_backbone:
            return
        if basis is None:
            raise ValueError("this model's warps are built on registration bases, and none were given")
        self.backbone = LinearBackbone(basis).to(self.template_landmarks.device)

    # -- codes -> weights and landmarks ------------------------------------------------------
    def prepare(self, codes: Codes) -> PreparedCodes:
        neutral = codes.neutral
        expressive = torch.nonzero(~neutral).flatten()
        neutral_landmarks = self.id_landmark_net(codes.z_id, self.template_landmarks)
        exp_landmarks = neutral_landmarks
        exp_layers: list[tuple[Tensor, Tensor]] = []
        if expressive.numel():
            exp_in = torch.cat([codes.z_exp, codes.z_id], dim=-1)
            predicted = self.exp_landmark_net(exp_in, self.template_landmarks)
            exp_landmarks = torch.where(neutral[:, None, None], neutral_landmarks, predicted)
            exp_layers = self.exp_field.generate(codes.z_exp[expressive])
        linear = None
        if self.config.linear_backbone:
            if self.backbone is None:
                raise ValueError("this model needs its registration bases: call attach_basis first")
            linear = self.backbone.faces(codes.z_id, codes.z_exp)
        return PreparedCodes(
            codes=codes,
            expressive=expressive,
            exp_layers=exp_layers,
            id_layers=self.id_field.generate(codes.z_id),
            exp_landmarks=exp_landmarks,
            neutral_landmarks=neutral_landmarks,
            linear=linear,
        )

    # -- the three fields on padded (S, P, 3) points --------------------------------------------
    def expression_warp(self, x: Tensor, prep: PreparedCodes) -> Tensor:
        """Observed -> canonical (neutral) space; the identity for neutral faces."""
        if prep.expressive.numel() == 0:
            return x
        rows = prep.expressive
        field = self.exp_field(x[rows], prep.exp_landmarks[rows], prep.exp_layers)
        warped = apply_warp(self.config.deformation, field, x[rows])
        if prep.linear is not None:
            warped = warped - self.backbone.expression_displacement(prep.linear, rows, x[rows])
        if rows.numel() == x.shape[0]:
            return warped
        out = x.clone()
        out[rows] = warped
        return out

    def identity_warp(self, x: Tensor, prep: PreparedCodes) -> tuple[Tensor, Tensor]:
        """Canonical -> template space, and the SDF correction delta (S, P)."""
        field = self.id_field(x, prep.neutral_landmarks, prep.id_layers)
        warped = apply_warp(self.config.deformation, field[..., :-1], x)
        if prep.linear is not None:
            warped = warped - self.backbone.identity_displacement(prep.linear, x)
        return warped, field[..., -1]

    def template_sdf(self, x: Tensor) -> Tensor:
        return self.template_field(x, self.template_landmarks)[..., 0]

    def _chain(self, x: Tensor, prep: PreparedCodes) -> dict[str, Tensor]:
        canonical = self.expression_warp(x, prep)
        template, correction = self.identity_warp(canonical, prep)
        s0 = self.template_sdf(template)
        return dict(
            sdf=s0 + correction,
            template_sdf=s0,
            correction=correction,
            canonical=canonical,
            template=template,
        )

    # -- public evaluation ------------------------------------------------------------------
    def query(
        self,
        points: Tensor,
        prep: PreparedCodes,
        scan_index: Tensor | None = None,
        *,
        detail: bool = True,
        neutral_displacement: bool = False,
    ) -> ImFaceOutput:
        """Evaluate prepared faces at points (N, 3); scan_index (N,) picks each point's face
        (may be None when there is one face)."""
        if scan_index is None:
            if prep.codes.num_faces != 1:
                raise ValueError("scan_index is required when evaluating several faces")
            groups = ScanGroups.single(points.shape[0], points.device)
        else:
            groups = ScanGroups.from_index(scan_index, prep.codes.num_faces)
        x = groups.pad(points)
        parts = self._chain(x, prep)
        coarse_sdf = parts["sdf"]
        r = None
        use_detail = detail and self.detail_field is not None and prep.codes.z_detail is not None
        if use_detail:
            r = self._detail_displacement(x, parts, prep)
            normal = self._detached_normal(x, prep)
            parts = self._chain(x + r.unsqueeze(-1) * normal, prep)
        displacement = None
        if neutral_displacement:
            displacement = self._neutral_displacement(x, prep)
        return ImFaceOutput(
            sdf=groups.unpad(parts["sdf"]),
            coarse_sdf=groups.unpad(coarse_sdf),
            template_sdf=groups.unpad(parts["template_sdf"]),
            correction=groups.unpad(parts["correction"]),
            canonical=groups.unpad(parts["canonical"]),
            template=groups.unpad(parts["template"]),
            exp_landmarks=prep.exp_landmarks,
            neutral_landmarks=prep.neutral_landmarks,
            detail=None if r is None else groups.unpad(r),
            neutral_displacement=None if displacement is None else groups.unpad(displacement),
        )

    def forward(
        self,
        points: Tensor,
        scan_index: Tensor | None,
        codes: Codes,
        *,
        detail: bool = True,
        neutral_displacement: bool = False,
    ) -> ImFaceOutput:
        return self.query(
            points,
            self.prepare(codes),
            scan_index,
            detail=detail,
            neutral_displacement=neutral_displacement,
        )

    def sdf(self, points: Tensor, prep: PreparedCodes, chunk: int = 65536) -> Tensor:
        """SDF of one prepared face at many points, in chunks (no graph kept)."""
        out = []
        with torch.no_grad():
            for start in range(0, points.shape[0], chunk):
                out.append(self.query(points[start : start + chunk], prep).sdf)
        return torch.cat(out) if out else points.new_zeros(0)

    # -- ImFace++ detail -----------------------------------------------------------------------
    def _detail_displacement(self, x: Tensor, parts: dict[str, Tensor], prep: PreparedCodes) -> Tensor:
        cfg = self.config
        g = self.detail_field(parts["template"], prep.codes.z_detail)
        fade = 1.0 + (parts["sdf"] / cfg.detail_band) ** 4
        return cfg.detail_max * torch.tanh(g) / fade

    def _detached_normal(self, x: Tensor, prep: PreparedCodes) -> Tensor:
        with torch.enable_grad():
            probe = x.detach().requires_grad_(True)
            s = self._chain(probe, prep)["sdf"]
            (grad,) = torch.autograd.grad(s.sum(), probe, retain_graph=False)
        return torch.nn.functional.normalize(grad, dim=-1).detach()

    def _neutral_displacement(self, x: Tensor, prep: PreparedCodes) -> Tensor:
        """ExpNet's deformation on the neutral faces' points (for the neutral suppression loss)."""
        out = torch.zeros_like(x)
        rows = torch.nonzero(prep.codes.neutral).flatten()
        if rows.numel() == 0:
            return out
        codes = prep.codes
        exp_in = torch.cat([codes.z_exp[rows], codes.z_id[rows]], dim=-1)
        landmarks = self.exp_landmark_net(exp_in, self.template_landmarks)
        field = self.exp_field(x[rows], landmarks, self.exp_field.generate(codes.z_exp[rows]))
        out[rows] = apply_warp(self.config.deformation, field, x[rows]) - x[rows]
        return out


def spatial_gradient(values: Tensor, points: Tensor, create_graph: bool = True) -> Tensor:
    """d values / d points for per-point values (N,) and points (N, 3) that require grad.

    create_graph=True keeps the graph so normal and eikonal losses can be trained through.
    """
    (grad,) = torch.autograd.grad(
        values,
        points,
        grad_outputs=torch.ones_like(values),
        create_graph=create_graph,
        retain_graph=True,
    )
    return grad


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
