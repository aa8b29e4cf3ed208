"""Neural Blend-Field: v(x) = sum_n w_n(x) psi_n(x - l_n) over the 5 landmarks.

`psi_n` are small SIRENs on landmark-relative coordinates, `w` comes from the Fusion Network on the
absolute position. For ExpNet / IDNet the psi_n weights are generated per scan by hyper nets from
the latent code (`HyperBlendField`); TempNet has no code, so its psi_n are ordinary SIRENs
(`StaticBlendField`). The last layer of every psi_n starts at zero: warps begin at the identity and
the template SDF at 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from imface.model.layers import (
    GroupedMLP,
    encoded_size,
    positional_encoding,
    run_siren,
    siren_init_,
    siren_layer_shapes,
)


class FusionNetwork(nn.Module):
    """Blend weights over the landmarks from the absolute position: 3 layers -> softmax."""

    def __init__(self, n_landmarks: int, width: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, width),
            nn.LayerNorm(width),
            nn.LeakyReLU(0.2),
            nn.Linear(width, width),
            nn.LayerNorm(width),
            nn.LeakyReLU(0.2),
            nn.Linear(width, n_landmarks),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.net(x), dim=-1)


class _BlendField(nn.Module):
    def __init__(self, n_landmarks, out_dim, width, hidden_layers, omega0, frequencies, fusion_width):
        super().__init__()
        self.n_landmarks = n_landmarks
        self.out_dim = out_dim
        self.omega0 = omega0
        self.frequencies = frequencies
        self.shapes = siren_layer_shapes(encoded_size(3, frequencies), width, hidden_layers, out_dim)
        self.fusion = FusionNetwork(n_landmarks, fusion_width)

    def blend(self, x: Tensor, landmarks: Tensor, layers: list[tuple[Tensor, Tensor]]) -> Tensor:
        """x (S, P, 3), landmarks (S, G, 3) or (G, 3) -> field (S, P, out_dim)."""
        relative = x.unsqueeze(-3) - landmarks.unsqueeze(-2)  # (S, G, P, 3)
        local = run_siren(positional_encoding(relative, self.frequencies), layers, self.omega0)
        weights = self.fusion(x)  # (S, P, G)
        return torch.einsum("sgpo,spg->spo", local, weights)


class StaticBlendField(_BlendField):
    """Blend-Field whose local nets are ordinary SIRENs (TempNet)."""

    def __init__(self, n_landmarks, out_dim, width, hidden_layers, omega0, frequencies, fusion_width):
        super().__init__(n_landmarks, out_dim, width, hidden_layers, omega0, frequencies, fusion_width)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        last = len(self.shapes) - 1
        for k, (out_f, in_f) in enumerate(self.shapes):
            w = torch.empty(n_landmarks, out_f, in_f)
            b = torch.empty(n_landmarks, out_f)
            siren_init_(w, b, first=k == 0, omega0=omega0)
            if k == last:
                w.zero_()
                b.zero_()
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))

    def forward(self, x: Tensor, landmarks: Tensor) -> Tensor:
        return self.blend(x, landmarks, list(zip(self.weights, self.biases, strict=True)))


class HyperBlendField(_BlendField):
    """Blend-Field whose local-net weights are generated per scan from a latent code.

    One hyper MLP per weight tensor (weights and bias of one layer together) and per local net,
    as in the official code; the G nets of a layer run as one `GroupedMLP`. With `split_codes`
    (ImFace++) local net n reads only its own 1/G slice of the code.
    """

    def __init__(
        self,
        code_dim,
        n_landmarks,
        out_dim,
        width,
        hidden_layers,
        omega0,
        frequencies,
        fusion_width,
        hyper_hidden,
        out_scale,
        split_codes,
    ):
        super().__init__(n_landmarks, out_dim, width, hidden_layers, omega0, frequencies, fusion_width)
        self.code_dim = code_dim
        self.split_codes = split_codes
        self.slice_dim = math.ceil(code_dim / n_landmarks) if split_codes else code_dim
        self.hypers = nn.ModuleList()
        last = len(self.shapes) - 1
        for k, (out_f, in_f) in enumerate(self.shapes):
            hyper = GroupedMLP(n_landmarks, self.slice_dim, tuple(hyper_hidden), out_f * in_f + out_f)
            self._init_output_layer(hyper, out_f, in_f, first=k == 0, last=k == last, scale=out_scale)
            self.hypers.append(hyper)

    def _init_output_layer(self, hyper, out_f, in_f, first, last, scale):
        """Output bias = a SIREN-initialised weight tensor, output weights small: at init every code
        generates (nearly) the same well-scaled SIREN. The last layer is exactly zero for any code."""
        weight, bias = hyper.weights[-1], hyper.biases[-1]
        with torch.no_grad():
            if last:
                weight.zero_()
                bias.zero_()
                return
            weight.mul_(scale)
            for g in range(bias.shape[0]):
                w = torch.empty(out_f, in_f)
                b = torch.empty(out_f)
                siren_init_(w, b, first=first, omega0=self.omega0)
                bias[g] = torch.cat([w.flatten(), b])

    def code_slices(self, code: Tensor) -> Tensor:
        """(S, D) -> (S, G, slice): each local net's part of the code."""
        s, g = code.shape[0], self.n_landmarks
        if not self.split_codes:
            return code.unsqueeze(1).expand(s, g, self.code_dim)
        padded = code.new_zeros(s, g * self.slice_dim)
        padded[:, : self.code_dim] = code
        return padded.view(s, g, self.slice_dim)

    def generate(self, code: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-scan local-net weights: list of (W (S, G, out, in), b (S, G, out))."""
        slices = self.code_slices(code)
        layers = []
        for (out_f, in_f), hyper in zip(self.shapes, self.hypers, strict=True):
            flat = hyper(slices)
            layers.append((flat[..., : out_f * in_f].unflatten(-1, (out_f, in_f)), flat[..., out_f * in_f :]))
        return layers

    def forward(self, x: Tensor, landmarks: Tensor, layers: list[tuple[Tensor, Tensor]]) -> Tensor:
        return self.blend(x, landmarks, layers)
