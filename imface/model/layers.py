"""Building blocks: SIREN initialisation, positional encoding, grouped MLPs and scan grouping.

Local nets of a Neural Blend-Field run as *groups*: the G nets of one block (one per landmark)
and the S scans of a batch are evaluated together with batched matmuls on a padded (S, P, C)
layout, whatever the order of points in the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def positional_encoding(x: Tensor, frequencies: int) -> Tensor:
    """NeRF encoding [x, sin(2^k pi x), cos(2^k pi x)] for k < frequencies (identity if 0)."""
    if frequencies <= 0:
        return x
    scales = (2.0 ** torch.arange(frequencies, device=x.device, dtype=x.dtype)) * math.pi
    angles = x[..., None, :] * scales[:, None]  # (..., F, C)
    encoded = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-2).flatten(-2)
    return torch.cat([x, encoded], dim=-1)


def encoded_size(channels: int, frequencies: int) -> int:
    return channels * (1 + 2 * max(frequencies, 0))


def siren_init_(weight: Tensor, bias: Tensor, first: bool, omega0: float) -> None:
    """SIREN initialisation (Sitzmann et al. 2020) of one layer, in place.

    Every layer computes sin(omega0 * (W x + b)); the first layer's weights are U(-1/in, 1/in), later
    ones U(-sqrt(6/in)/omega0, +...) so that pre-activations stay unit-scale through depth.
    """
    fan_in = weight.shape[-1]
    bound = 1.0 / fan_in if first else math.sqrt(6.0 / fan_in) / omega0
    with torch.no_grad():
        weight.uniform_(-bound, bound)
        bias.uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))


def siren_layer_shapes(in_dim: int, width: int, hidden_layers: int, out_dim: int):
    """(out, in) of each linear layer of a SIREN with `hidden_layers` hidden layers."""
    dims = [in_dim] + [width] * hidden_layers + [out_dim]
    return [(dims[i + 1], dims[i]) for i in range(len(dims) - 1)]


def run_siren(h: Tensor, layers: list[tuple[Tensor, Tensor]], omega0: float) -> Tensor:
    """Evaluate grouped SIREN layers: sin(omega0 * (W h + b)) then a linear last layer.

    h: (S, G, P, in). Each weight is (S|1, G, out, in) and each bias (S|1, G, out); static weights
    (leading 1) serve every scan. omega0 is folded into the (small) weights rather than applied to
    the (large) activations, and the bias add is fused into the matmul: both matter on CPU.
    """
    s, g, p, _ = h.shape
    last = len(layers) - 1
    in_place = not torch.is_grad_enabled()
    for k, (weight, bias) in enumerate(layers):
        scale = omega0 if k < last else 1.0
        w = (weight * scale).expand(s, g, -1, -1).reshape(s * g, *weight.shape[-2:])
        b = (bias * scale).expand(s, g, -1).reshape(s * g, 1, -1)
        h = torch.baddbmm(b, h.reshape(s * g, p, -1), w.transpose(-1, -2))
        if k < last:
            h = h.sin_() if in_place else torch.sin(h)
        h = h.view(s, g, p, -1)
    return h


class GroupedMLP(nn.Module):
    """G independent ReLU MLPs of identical shape, evaluated together: (S, G, in) -> (S, G, out)."""

    def __init__(self, groups: int, in_dim: int, hidden: tuple[int, ...], out_dim: int):
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i in range(len(dims) - 1):
            w = torch.empty(groups, dims[i + 1], dims[i])
            for g in range(groups):
                nn.init.kaiming_uniform_(w[g], a=0.0, nonlinearity="relu")
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(groups, dims[i + 1])))

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.einsum("sgi,goi->sgo", x, w) + b
            if k < last:
                x = torch.relu(x)
        return x


@dataclass
class ScanGroups:
    """Maps a flat batch of points with per-point scan indices to a padded (S, P, C) layout.

    Built once per forward and shared by every layer, so per-scan generated weights apply with
    one batched matmul regardless of how points are ordered or how many each scan has.
    """

    num_scans: int
    max_points: int
    scan_of_point: Tensor  # (N,) long
    slot_of_point: Tensor  # (N,) long, position inside its scan's row
    uniform: bool  # points are already (S, P) contiguous: pad/unpad are reshapes

    @classmethod
    def from_index(cls, scan_index: Tensor, num_scans: int) -> ScanGroups:
        scan_index = scan_index.long()
        n = scan_index.numel()
        if n and (int(scan_index.min()) < 0 or int(scan_index.max()) >= num_scans):
            raise IndexError(f"scan index out of range for {num_scans} scans")
        counts = torch.bincount(scan_index, minlength=num_scans)
        if n % max(num_scans, 1) == 0 and bool((counts == n // num_scans).all()):
            per = n // num_scans
            expected = torch.arange(num_scans, device=scan_index.device).repeat_interleave(per)
            if torch.equal(scan_index, expected):
                slots = torch.arange(per, device=scan_index.device).repeat(num_scans)
                return cls(num_scans, per, scan_index, slots, True)
        order = torch.argsort(scan_index, stable=True)
        offsets = torch.cumsum(counts, 0) - counts
        slots = torch.empty_like(scan_index)
        slots[order] = torch.arange(n, device=scan_index.device) - offsets[scan_index[order]]
        max_points = int(counts.max()) if n else 0
        return cls(num_scans, max_points, scan_index, slots, False)

    @classmethod
    def single(cls, num_points: int, device: torch.device | str = "cpu") -> ScanGroups:
        zeros = torch.zeros(num_points, dtype=torch.long, device=device)
        return cls(1, num_points, zeros, torch.arange(num_points, device=device), True)

    def pad(self, values: Tensor) -> Tensor:
        """(N, C) -> (S, P, C); padding slots are zero."""
        if self.uniform:
            return values.reshape(self.num_scans, self.max_points, *values.shape[1:])
        out = values.new_zeros(self.num_scans, self.max_points, *values.shape[1:])
        return out.index_put((self.scan_of_point, self.slot_of_point), values)

    def unpad(self, padded: Tensor) -> Tensor:
        """(S, P, ...) -> (N, ...) in the original point order."""
        if self.uniform:
            return padded.reshape(-1, *padded.shape[2:])
        return padded[self.scan_of_point, self.slot_of_point]
