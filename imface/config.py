"""Configuration dataclasses. Every checkpoint stores its ``ModelConfig`` as JSON.

Sizes follow the ImFace paper / official code in ``ModelConfig.paper()``; the default is a smaller
network that trains and morphs at interactive rates on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

# iBUG-68 indices of the 5 Neural Blend-Field landmarks: outer eye corners, nose tip, mouth corners.
BLEND_LANDMARK_IBUG68 = (36, 45, 30, 48, 54)

Deformation = Literal["translation", "se3"]


@dataclass
class ModelConfig:
    """Sizes and switches of the ImFace / ImFace++ network."""

    id_dim: int = 64  # z_id
    exp_dim: int = 64  # z_exp
    n_landmarks: int = 5  # local nets per Neural Blend-Field
    deformation: Deformation = "translation"  # warp type of ExpNet and IDNet
    siren_width: int = 32  # hidden width of every local net psi_n (paper text: 32; code: 128)
    siren_hidden_layers: int = 3
    siren_omega0: float = 30.0  # sin(omega0 * x) in the first layer (SIREN)
    positional_encoding: int = 0  # NeRF frequencies of x - l_n; 0 = off
    hyper_hidden: tuple[int, ...] = (64, 64)  # hyper-net hidden layers (ReLU)
    hyper_out_scale: float = 1e-2  # initial scale of the hyper nets' output layers
    split_codes: bool = True  # ImFace++: each local net reads its own 1/n slice of the code
    fusion_width: int = 64  # Fusion Network (LayerNorm + LeakyReLU) -> softmax over landmarks
    landmark_hidden: tuple[int, ...] = (256, 256)  # Landmark-Nets eta and eta'
    # ImFace++ refinement (detail) field in template space
    detail: bool = False
    detail_dim: int = 32
    detail_width: int = 64
    detail_hidden_layers: int = 3
    detail_frequencies: int = 6  # positional encoding of template coordinates
    detail_max: float = 0.05  # r = detail_max * tanh(g) / (1 + (s / detail_band)^4)
    detail_band: float = 0.02
    # warps learn a residual on the linear face of the registration bases (imface/model/backbone.py);
    # needs code_space "registrations"
    linear_backbone: bool = False

    @classmethod
    def paper(cls, **overrides: Any) -> ModelConfig:
        """The sizes of the paper / official code (z = 128, SIREN width 128, hyper 128-128)."""
        base = dict(
            id_dim=128,
            exp_dim=128,
            siren_width=128,
            siren_hidden_layers=3,
            hyper_hidden=(128, 128),
            fusion_width=128,
            landmark_hidden=(256, 256),
            detail_dim=64,
            detail_width=128,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def tiny(cls, **overrides: Any) -> ModelConfig:
        """A very small network for tests."""
        base = dict(
            id_dim=10,
            exp_dim=10,
            siren_width=16,
            siren_hidden_layers=2,
            hyper_hidden=(16,),
            fusion_width=16,
            landmark_hidden=(32,),
            detail_dim=8,
            detail_width=16,
            detail_hidden_layers=2,
            detail_frequencies=2,
        )
        base.update(overrides)
        return cls(**base)

    def validate(self) -> None:
        if self.deformation not in ("translation", "se3"):
            raise ValueError(f"deformation must be 'translation' or 'se3', not {self.deformation!r}")
        for name in ("id_dim", "exp_dim", "n_landmarks", "siren_width", "siren_hidden_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.detail and self.detail_dim < 1:
            raise ValueError("detail_dim must be positive when the detail field is on")
        # far above any useful network, low enough that building one cannot exhaust memory
        for name, (low, high) in _SIZE_LIMITS.items():
            values = getattr(self, name)
            for value in values if isinstance(values, tuple) else (values,):
                if not low <= value <= high:
                    raise ValueError(f"{name} = {value} is outside {low}..{high}")
        for name in ("hyper_hidden", "landmark_hidden"):
            if len(getattr(self, name)) > _MAX_HIDDEN_LAYERS:
                raise ValueError(f"{name} has more than {_MAX_HIDDEN_LAYERS} layers")

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        _require_object(data, "the model config")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        values = dict(data)
        for key, value in values.items():
            values[key] = _typed(key, value, _default_of(known[key]))
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


_SIZE_LIMITS = {
    "id_dim": (1, 4096),
    "exp_dim": (1, 4096),
    "n_landmarks": (1, 68),
    "siren_width": (1, 4096),
    "siren_hidden_layers": (1, 64),
    "positional_encoding": (0, 32),
    "hyper_hidden": (1, 4096),
    "fusion_width": (1, 4096),
    "landmark_hidden": (1, 4096),
    "detail_dim": (0, 4096),
    "detail_width": (1, 4096),
    "detail_hidden_layers": (1, 64),
    "detail_frequencies": (0, 32),
}
_MAX_HIDDEN_LAYERS = 16


def _require_object(data: Any, what: str) -> None:
    if isinstance(data, str):
        raise ValueError(f"{what} is a JSON string, not a JSON object (was it encoded twice?)")
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object, not {type(data).__name__}")


def _default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _typed(key: str, value: Any, default: Any) -> Any:
    """`value` checked against the type of the field's default (JSON lists become tuples)."""
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or not all(_is_int(v) for v in value):
            raise ValueError(f"model config {key!r} must be a list of integers, not {value!r:.60}")
        return tuple(value)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = _is_int(value)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"model config {key!r} must be a {type(default).__name__}, not {value!r:.60}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class LossWeights:
    """Training loss weights (official values; IMFACE.md)."""

    sdf: float = 3000.0
    normal: float = 100.0
    eikonal: float = 50.0  # observation space
    eikonal_canonical: float = 50.0
    landmark: float = 1000.0  # eta
    landmark_neutral: float = 1000.0  # eta'
    landmark_consistency: float = 100.0
    embedding: float = 1e6
    correction: float = 300.0  # keeps the SDF correction small: shape belongs to the warps
    # correspondence supervision (registered points): ExpNet -> the person's neutral point,
    # the whole chain -> the template point
    correspondence_expression: float = 1000.0
    correspondence_template: float = 1000.0
    # the same on blends of two training scans at the blend of their (tied) codes: teaches the
    # warps the faces between the training people (0: off)
    correspondence_between: float = 0.0
    neutral_suppression: float = 100.0
    # faces of random codes keep the targets' height-field order (each column along +z crosses the
    # surface once, from behind to in front): no pockets or floating pieces where no scan is (0: off)
    height_field: float = 0.0
    detail_sdf: float = 3000.0
    detail_normal: float = 100.0
    detail_embedding: float = 1e6

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig:
    """Auto-decoder training schedule."""

    model: ModelConfig = field(default_factory=ModelConfig)
    losses: LossWeights = field(default_factory=LossWeights)
    epochs: int = 200
    scans_per_batch: int = 8
    points_per_scan: int = 4096  # half on the surface, half in the sphere
    correspondence_points: int = 512  # registered points per scan (0: off; only scans with one)
    random_faces: int = 4  # faces of random codes per step for the height_field term
    random_face_points: int = 512  # points in the 100 mm sphere per random face
    lr: float = 1e-4
    code_lr: float = 1e-3
    lr_decay: float = 0.95
    lr_decay_every: int = 10  # epochs
    lr_decay_after: int = 200  # epochs
    code_init_std: float = 0.01
    # "learned": auto-decoder codes (the paper); "registrations": codes fixed before training to
    # the PCA coordinates of each scan's registration (imface/model/basis.py)
    code_space: Literal["learned", "registrations"] = "learned"
    detail_start_epoch: int = 0  # ImFace++ detail stage starts here (if model.detail)
    detail_ramp_epochs: int = 20  # cosine ramp of the detail losses
    checkpoint_every: int = 200  # steps
    seed: int = 0
    amp: bool = True  # mixed precision on CUDA
    workers: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        _require_object(data, "the training config")
        values = dict(data)
        _refuse_unknown(cls, values, "training config")
        model = ModelConfig.from_dict(values.pop("model", {}))
        losses = values.pop("losses", {})
        _require_object(losses, "the loss weights")
        _refuse_unknown(LossWeights, losses, "loss weight")
        if values.get("code_space", "learned") not in ("learned", "registrations"):
            raise ValueError(f"code_space must be 'learned' or 'registrations', not {values['code_space']!r}")
        return cls(model=model, losses=LossWeights(**losses), **values)


def _refuse_unknown(cls, values: dict, what: str) -> None:
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} keys: {', '.join(unknown)}")


@dataclass
class FitConfig:
    """Fitting codes to a scan (Eq. 17) with our speed-ups."""

    # 80 steps at lr 3e-2 on 2048 points reach the accuracy of the former 200 at 1e-2 on 8192 on
    # real scans (benchmarks/real_scans.py) in a tenth of the time
    iterations: int = 80
    lr: float = 3e-2
    points_per_step: int = 2048
    restarts: int = 1
    init: Literal["mean", "zeros"] = "mean"
    embedding_weight: float = 1e2
    # codes tied to registrations (imface/model/basis.py): a whitened prior of this weight (on
    # the leading dimension's scale; held-out scans fit best near 10), and each dimension held
    # within code_bound_std of its std (the network saw no codes beyond the data's range)
    whitened_prior_weight: float = 10.0
    code_bound_std: float = 3.0
    seed: int = 0
    # after the codes, a regularised refinement along the normals brings the fitted mesh onto
    # the scan where it has data (imface/fit/refine.py); False keeps the codes-only surface
    detail_stage: bool = True
