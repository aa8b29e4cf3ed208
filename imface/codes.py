"""A face's latent codes as the editor and the CLI hold them (numpy), and the statistics of a
code space that its sliders move along."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from imface.io import CodeStats
from imface.model.imface import Codes


@dataclass
class FaceCodes:
    """One face's latent codes as numpy (what the editor stores and presets hold)."""

    z_id: np.ndarray
    z_exp: np.ndarray
    neutral: bool = False
    z_detail: np.ndarray | None = None

    def copy(self) -> FaceCodes:
        detail = None if self.z_detail is None else self.z_detail.copy()
        return FaceCodes(self.z_id.copy(), self.z_exp.copy(), bool(self.neutral), detail)

    def equals(self, other: FaceCodes | None) -> bool:
        return (
            other is not None
            and self.neutral == other.neutral
            and np.array_equal(self.z_id, other.z_id)
            and np.array_equal(self.z_exp, other.z_exp)
        )

    def lerp(self, other: FaceCodes, t: float) -> FaceCodes:
        detail = None
        if self.z_detail is not None and other.z_detail is not None:
            detail = (1 - t) * self.z_detail + t * other.z_detail
        return FaceCodes(
            ((1 - t) * self.z_id + t * other.z_id).astype(np.float32),
            ((1 - t) * self.z_exp + t * other.z_exp).astype(np.float32),
            self.neutral if t < 0.5 else other.neutral,
            detail,
        )

    def to_json(self) -> dict:
        d = {"z_id": self.z_id.tolist(), "z_exp": self.z_exp.tolist(), "neutral": bool(self.neutral)}
        if self.z_detail is not None:
            d["z_detail"] = self.z_detail.tolist()
        return d

    @classmethod
    def from_json(cls, d: dict) -> FaceCodes:
        """The codes JSON of presets and of ``fit --codes`` (z_id, z_exp, neutral)."""
        detail = d.get("z_detail")
        z_id = np.asarray(d["z_id"], np.float32).reshape(-1)
        z_exp = np.asarray(d["z_exp"], np.float32).reshape(-1)
        neutral = bool(np.asarray(d.get("neutral", False)).reshape(-1)[0])
        return cls(z_id, z_exp, neutral, None if detail is None else np.asarray(detail, np.float32))

    @classmethod
    def from_torch(cls, codes: Codes) -> FaceCodes:
        neutral = False if codes.neutral is None else bool(codes.neutral.reshape(-1)[0])
        detail = None if codes.z_detail is None else to_numpy(codes.z_detail)
        return cls(to_numpy(codes.z_id), to_numpy(codes.z_exp), neutral, detail)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A code tensor as a flat float32 numpy vector."""
    return t.detach().cpu().numpy().astype(np.float32).reshape(-1)


@dataclass
class CodeSpace:
    """Statistics of one code space: slider k moves along basis[k] by std[k] per unit."""

    mean: np.ndarray  # (D,)
    std: np.ndarray  # (K,) std along each principal direction
    basis: np.ndarray  # (K, D) orthonormal rows
    raw_std: np.ndarray  # (D,) per-dimension std (raw-dimension sliders)

    @classmethod
    def of(cls, stats: CodeStats) -> CodeSpace:
        floor = 1e-3  # a direction without spread still moves a little (one training code)
        return cls(
            stats.mean.numpy().astype(np.float32),
            np.maximum(stats.basis_std.numpy(), floor).astype(np.float32),
            stats.basis.numpy().astype(np.float32),
            np.maximum(stats.std.numpy(), floor).astype(np.float32),
        )

    @classmethod
    def isotropic(cls, dim: int, std: float) -> CodeSpace:
        z, s = np.zeros(dim, np.float32), np.full(dim, std, np.float32)
        return cls(z, s, np.eye(dim, dtype=np.float32), s.copy())

    def to_sliders(self, z: np.ndarray, raw: bool = False) -> np.ndarray:
        if raw:
            return (z - self.mean) / self.raw_std
        return (self.basis @ (z - self.mean)) / self.std

    def with_slider(self, z: np.ndarray, k: int, value: float, raw: bool = False) -> np.ndarray:
        z = z.astype(np.float32).copy()
        if raw:
            z[k] = self.mean[k] + value * self.raw_std[k]
            return z
        current = float(self.basis[k] @ (z - self.mean)) / self.std[k]
        return (z + (value - current) * self.std[k] * self.basis[k]).astype(np.float32)

    def sample(self, rng: np.random.Generator, scale: float = 0.85) -> np.ndarray:
        t = rng.standard_normal(self.std.shape[0]).astype(np.float32) * scale
        return (self.mean + (t * self.std) @ self.basis).astype(np.float32)
