"""Deformations: SE(3) exponential map of a twist field, or plain translation."""

from __future__ import annotations

import torch
from torch import Tensor

# Below this squared angle the Rodrigues coefficients use their Taylor series (no 0/0).
_SMALL_ANGLE_SQ = 1e-6


def _coefficients(omega: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A = sin t / t, B = (1 - cos t) / t^2, C = (t - sin t) / t^3 for t = |omega|, stable at 0."""
    t2 = (omega * omega).sum(-1, keepdim=True)
    small = t2 < _SMALL_ANGLE_SQ
    t2_safe = torch.where(small, torch.ones_like(t2), t2)
    t = torch.sqrt(t2_safe)
    a = torch.where(small, 1 - t2 / 6 + t2 * t2 / 120, torch.sin(t) / t)
    b = torch.where(small, 0.5 - t2 / 24 + t2 * t2 / 720, (1 - torch.cos(t)) / t2_safe)
    c = torch.where(small, 1.0 / 6 - t2 / 120 + t2 * t2 / 5040, (t - torch.sin(t)) / (t2_safe * t))
    return a, b, c


def se3_apply(twist: Tensor, points: Tensor) -> Tensor:
    """Apply exp(twist) to points. twist (..., 6) = (omega, v), points (..., 3).

    exp([omega]x, v) = (R, V v) with R = I + A K + B K^2 and V = I + B K + C K^2, K = [omega]x;
    K y is a cross product, so no 3x3 matrices are formed.
    """
    omega, v = twist[..., :3], twist[..., 3:]
    a, b, c = _coefficients(omega)
    wx = torch.cross(omega, points, dim=-1)
    wwx = torch.cross(omega, wx, dim=-1)
    wv = torch.cross(omega, v, dim=-1)
    wwv = torch.cross(omega, wv, dim=-1)
    return points + a * wx + b * wwx + v + b * wv + c * wwv


def se3_matrix(twist: Tensor) -> Tensor:
    """The 4x4 rigid transform exp(twist) (for tests and exports). twist (..., 6)."""
    omega, v = twist[..., :3], twist[..., 3:]
    a, b, c = _coefficients(omega)
    zero = torch.zeros_like(omega[..., 0])
    k = torch.stack(
        [
            torch.stack([zero, -omega[..., 2], omega[..., 1]], -1),
            torch.stack([omega[..., 2], zero, -omega[..., 0]], -1),
            torch.stack([-omega[..., 1], omega[..., 0], zero], -1),
        ],
        -2,
    )
    eye = torch.eye(3, dtype=twist.dtype, device=twist.device).expand_as(k)
    k2 = k @ k
    rot = eye + a[..., None] * k + b[..., None] * k2
    vmat = eye + b[..., None] * k + c[..., None] * k2
    out = torch.zeros(*twist.shape[:-1], 4, 4, dtype=twist.dtype, device=twist.device)
    out[..., :3, :3] = rot
    out[..., :3, 3] = (vmat @ v[..., None])[..., 0]
    out[..., 3, 3] = 1
    return out


def warp_channels(deformation: str) -> int:
    return 6 if deformation == "se3" else 3


def apply_warp(deformation: str, field: Tensor, points: Tensor) -> Tensor:
    """Move points by a blended deformation field: x + t, or exp(omega, v) x."""
    if deformation == "se3":
        return se3_apply(field, points)
    return points + field
