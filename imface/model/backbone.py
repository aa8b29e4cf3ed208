"""The linear face of the codes as a deformation of space: the backbone the warps learn on.

With codes tied to registrations (imface/model/basis.py) the codes already say how each face's
registered vertices sit relative to the mean face: identity directions move the mean to the
person's neutral face, expression directions move that to the expressive face. Here those vertex
displacements are spread into space (a Gaussian-weighted average of the nearest vertices, stored
on a regular grid over the face and read by trilinear interpolation), so the two warps become

    canonical = ExpNet(x) - e(q)      template = IDNet(p') - d(q')

with q the template point whose linear face passes through x (x = q + d(q) + e(q), found by a few
fixed-point steps) and q' the one for p' (p' = q' + d(q')). At the codes of any face the warps
then start from the linear face's correspondence, which generalises to new people as the PCA
does; the networks only learn the residual (and the SDF what the linear face cannot carry). The
grid is rebuilt from the bases when a model is loaded, so checkpoints stay small.
Trilinear interpolation is written out (gathers and products) rather than `grid_sample`, whose
backward is not differentiable again (the normal and eikonal losses need that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor, nn

from imface.model.basis import ShapeBasis

CELL = 0.05  # grid spacing in model units (5 mm): finer than the displacements vary but the lips
MARGIN = 0.2  # grid beyond the face's vertices; farther out the border value holds
NEIGHBOURS = 16
KERNEL_SIGMA = 0.04  # Gaussian weights of the nearest vertices (the vertex spacing is ~4 mm)
FIXED_POINT_STEPS = 3  # |grad d| is ~0.1, so each step cuts the error about tenfold
_CORNERS = [(dx, dy, dz) for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]


@dataclass
class LinearFaces:
    """The grids of displacement of S faces: identity (S, G, 3) and expression (S, G, 3)."""

    identity: Tensor
    expression: Tensor


class LinearBackbone(nn.Module):
    def __init__(self, basis: ShapeBasis, cell: float = CELL):
        super().__init__()
        sites = basis.mean.double().numpy()
        low = sites.min(0) - MARGIN
        counts = np.ceil((sites.max(0) + MARGIN - low) / cell).astype(int) + 1  # nodes along x, y, z
        axes = [low[i] + cell * np.arange(counts[i]) for i in range(3)]
        gz, gy, gx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")  # x varies fastest
        nodes = np.stack([gx, gy, gz], -1).reshape(-1, 3)
        weights = _kernel_weights(nodes, sites)
        id_std, exp_std = basis.code_std()
        # per unit of code: the codes are the directions' coefficients times their std
        self.register_buffer("identity", _unit_fields(basis.identity, id_std, weights), persistent=False)
        self.register_buffer("expression", _unit_fields(basis.expression, exp_std, weights), persistent=False)
        self.register_buffer("low", torch.tensor(low, dtype=torch.float32), persistent=False)
        self.register_buffer("top", torch.tensor(counts - 1, dtype=torch.float32), persistent=False)
        self.counts = tuple(int(c) for c in counts)
        corners = torch.tensor(_CORNERS)
        offsets = (corners[:, 2] * counts[1] + corners[:, 1]) * counts[0] + corners[:, 0]
        self.register_buffer("corner_offsets", offsets, persistent=False)
        self.register_buffer("corners", corners, persistent=False)  # (8, 3): low (0) or high (1) node
        self.cell = cell

    def faces(self, z_id: Tensor, z_exp: Tensor) -> LinearFaces:
        """(S, id_dim), (S, exp_dim) codes -> their displacement grids."""
        shape = (z_id.shape[0], -1, 3)
        return LinearFaces((z_id @ self.identity).view(shape), (z_exp @ self.expression).view(shape))

    def expression_displacement(self, faces: LinearFaces, rows: Tensor, x: Tensor) -> Tensor:
        """e(q) for observed points x (R, P, 3) of faces `rows`, where x = q + d(q) + e(q)."""
        both = torch.cat([faces.identity[rows], faces.expression[rows]], dim=-1)
        q = self._preimage(x, lambda q: self.sample(both, q).view(*q.shape[:-1], 2, 3).sum(-2))
        return self.sample(both[..., 3:], q)

    def identity_displacement(self, faces: LinearFaces, x: Tensor) -> Tensor:
        """d(q) for neutral points x (S, P, 3), where x = q + d(q)."""
        q = self._preimage(x, lambda q: self.sample(faces.identity, q))
        return self.sample(faces.identity, q)

    @staticmethod
    def _preimage(x: Tensor, displacement) -> Tensor:
        """q with q + displacement(q) = x, by fixed-point steps. Only the last step is in the
        graph: there dq/dx is I instead of the exact (I + grad D)^-1, so the displacement read at
        q has its x-derivative off by grad e . grad D (~0.1 x 0.1: normals move by ~1 %), while
        the graph that the normal and eikonal terms differentiate twice shrinks to one step in
        three: training steps and fits get cheaper, the values stay the same."""
        with torch.no_grad():
            q = x
            for _ in range(FIXED_POINT_STEPS - 1):
                q = x - displacement(q)
        return x - displacement(q)

    def sample(self, grid: Tensor, points: Tensor) -> Tensor:
        """Trilinear interpolation of per-face grids (S, G, C) at points (S, P, 3) -> (S, P, C);
        points beyond the grid take the border's value. The eight corners are read in one gather
        and weighted in one product: on a fit's small batches the count of ops is the cost."""
        u = torch.minimum(torch.clamp((points - self.low) / self.cell, min=0), self.top)
        corner = torch.minimum(u.detach().floor(), self.top - 1)
        t = u - corner
        corner = corner.long()
        nx, ny, _ = self.counts
        base = (corner[..., 2] * ny + corner[..., 1]) * nx + corner[..., 0]
        index = base[..., None] + self.corner_offsets  # (S, P, 8)
        s, p, channels = base.shape[0], base.shape[1], grid.shape[-1]
        values = torch.gather(grid, 1, index.view(s, p * 8, 1).expand(-1, -1, channels))
        sides = torch.stack([1 - t, t], dim=-1)  # (S, P, 3, 2): weights of the low and high node
        c = self.corners
        weights = sides[..., 0, c[:, 0]] * sides[..., 1, c[:, 1]] * sides[..., 2, c[:, 2]]  # (S, P, 8)
        return (weights[..., None, :] @ values.view(s, p, 8, channels)).squeeze(-2)


def _kernel_weights(nodes: np.ndarray, sites: np.ndarray) -> torch.Tensor:
    """Sparse (nodes, sites) matrix of normalised Gaussian weights of each node's nearest sites."""
    k = min(NEIGHBOURS, len(sites))
    distance, index = cKDTree(sites).query(nodes, k=k, workers=-1)
    distance, index = distance.reshape(len(nodes), k), index.reshape(len(nodes), k)
    # relative to the nearest site, so far nodes keep finite weights (they take the nearest's value)
    logits = -(distance**2 - distance[:, :1] ** 2) / (2 * KERNEL_SIGMA**2)
    weights = np.exp(logits)
    weights /= weights.sum(1, keepdims=True)
    rows = np.repeat(np.arange(len(nodes)), k)
    return torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([rows, index.reshape(-1)])),
        torch.from_numpy(weights.reshape(-1).astype(np.float32)),
        (len(nodes), len(sites)),
        check_invariants=True,
    ).coalesce()


def _unit_fields(directions: Tensor, std: Tensor, weights: Tensor) -> Tensor:
    """(K, M, 3) std-long directions -> (K, G * 3): each code dimension's displacement grid per
    unit of code (zero for dimensions past the data's rank)."""
    live = std > 0
    per_unit = torch.zeros_like(directions)
    per_unit[live] = directions[live] / std[live, None, None]
    k, m, _ = per_unit.shape
    spread = torch.sparse.mm(weights, per_unit.permute(1, 0, 2).reshape(m, k * 3))  # (G, K * 3)
    return spread.view(-1, k, 3).permute(1, 0, 2).reshape(k, -1).contiguous()
