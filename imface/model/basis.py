"""Codes tied to the registrations: a structured latent space whose prior is known.

Learned auto-decoder codes sit in whatever small ball the code penalty leaves them (std ~0.003 on
our corpora), so a new person's fitted code lands far outside anything the network was trained
on. Here the codes are fixed before training instead: a person's identity code is the PCA
coordinates of their neutral registration, a scan's expression code those of its displacement
from that neutral registration (both over the face region scans show), in units of the leading
direction's std times `scale`: the first dimension has std `scale`, the others as much less as
their shapes vary less, so the network reads codes whose size is the shape change. The network
learns the nonlinear surface for them; the codes of a new scan start from the linear fit of the
same bases (closed-form, fast, the same for any pose and unit after alignment) and the fit's
Gaussian prior (whitened by `code_std`) is the right one. The bases travel in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from imface.baseline import PCAModel

CODE_SCALE = 0.2  # std of the leading code dimension (the fit's prior weight assumes it)
MAX_BASIS_VERTICES = 2000  # enough to fit codes to a scan; keeps checkpoints small


@dataclass
class ShapeBasis:
    """mean (M, 3) neutral face; identity (Kid, M, 3) and expression (Kexp, M, 3) directions, each
    one standard deviation long (zero rows past the data's rank); scale = the leading code
    dimension's std."""

    mean: torch.Tensor
    identity: torch.Tensor
    expression: torch.Tensor
    scale: float = CODE_SCALE

    @classmethod
    def build(
        cls,
        neutral: np.ndarray,
        expressive: np.ndarray,
        expressive_neutral: np.ndarray,
        id_dim: int,
        exp_dim: int,
        scale: float = CODE_SCALE,
    ) -> ShapeBasis:
        """neutral (P, M, 3) one registration per person; expressive (E, M, 3) registrations of
        expressive scans and expressive_neutral (E, M, 3) their people's neutral ones."""
        mean = neutral.mean(0)
        identity = _principal_directions(neutral - mean, id_dim)
        displacement = expressive - expressive_neutral
        expression = _principal_directions(displacement, exp_dim)
        as_tensor = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
        return cls(as_tensor(mean), as_tensor(identity), as_tensor(expression), scale)

    # -- codes of known registrations ----------------------------------------------------------
    def identity_codes(self, neutral: np.ndarray) -> torch.Tensor:
        """(P, M, 3) neutral registrations -> (P, id_dim) codes."""
        return _coefficients(self.identity, neutral - self.mean.numpy()) * self.code_std()[0]

    def expression_codes(self, expressive: np.ndarray, expressive_neutral: np.ndarray) -> torch.Tensor:
        return _coefficients(self.expression, expressive - expressive_neutral) * self.code_std()[1]

    def code_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Std of each identity and expression code dimension (0 past the data's rank)."""
        out = []
        for directions in (self.identity, self.expression):
            stds = directions.flatten(1).norm(dim=1)
            out.append(self.scale * stds / stds.max().clamp(min=1e-30))
        return out[0], out[1]

    def face(self, z_id: torch.Tensor, z_exp: torch.Tensor) -> torch.Tensor:
        """(M, 3) the linear face of the codes."""
        face = self.mean.clone()
        pairs = zip((z_id, z_exp), self.code_std(), (self.identity, self.expression), strict=True)
        for z, std, directions in pairs:
            live = std > 0
            face += torch.einsum("k,kmd->md", z[live] / std[live], directions[live])
        return face

    # -- codes of a scan -----------------------------------------------------------------------
    def fit(self, surface_points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes of the linear face (mean + identity + expression directions) closest to a scan's
        surface samples in the model frame: the fit's starting point."""
        directions = torch.cat([self.identity, self.expression]).flatten(1)
        stds = directions.norm(dim=1)
        live = stds > 0
        components = torch.zeros_like(directions)
        components[live] = directions[live] / stds[live, None]
        vertices = len(self.mean)
        linear = PCAModel(
            self.mean.flatten(), components, stds, np.zeros((0, 3), int), torch.ones(vertices, dtype=bool)
        )
        coefficients = torch.from_numpy(linear.fit(surface_points))
        coefficients[~live] = 0
        k = len(self.identity)
        id_std, exp_std = self.code_std()
        return coefficients[:k] * id_std, coefficients[k:] * exp_std

    # -- storage (tensors of the checkpoint) ---------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "basis.mean": self.mean.contiguous(),
            "basis.identity": self.identity.contiguous(),
            "basis.expression": self.expression.contiguous(),
            "basis.scale": torch.tensor([self.scale], dtype=torch.float32),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> ShapeBasis | None:
        if "basis.mean" not in tensors:
            return None
        return cls(
            tensors["basis.mean"].float(),
            tensors["basis.identity"].float(),
            tensors["basis.expression"].float(),
            float(tensors["basis.scale"].reshape(-1)[0]),
        )

    @staticmethod
    def expected_shapes(id_dim: int, exp_dim: int, vertices: int) -> dict[str, tuple[int, ...]]:
        return {
            "basis.mean": (vertices, 3),
            "basis.identity": (id_dim, vertices, 3),
            "basis.expression": (exp_dim, vertices, 3),
            "basis.scale": (1,),
        }


def basis_vertices(region: np.ndarray, limit: int = MAX_BASIS_VERTICES) -> np.ndarray:
    """Indices of at most `limit` region vertices, evenly spread over the region's index order."""
    inside = np.flatnonzero(region)
    if len(inside) <= limit:
        return inside
    return inside[np.linspace(0, len(inside) - 1, limit).round().astype(int)]


def _principal_directions(centred: np.ndarray, dim: int) -> np.ndarray:
    """(N, M, 3) centred samples -> (dim, M, 3) principal directions scaled by their std."""
    n, m = len(centred), centred.shape[1]
    out = np.zeros((dim, m, 3))
    if n < 2:
        return out
    _, s, vh = np.linalg.svd(centred.reshape(n, -1).astype(np.float64), full_matrices=False)
    stds = s / np.sqrt(n - 1)
    k = min(dim, int((stds > 1e-5 * max(stds[0], 1e-30)).sum()))  # float32 noise is not a shape
    out[:k] = (vh[:k] * stds[:k, None]).reshape(k, m, 3)
    return out


def _coefficients(directions: torch.Tensor, offsets: np.ndarray) -> torch.Tensor:
    """Whitened coefficients of (N, M, 3) offsets along std-long directions (K, M, 3)."""
    flat = directions.double().flatten(1)  # (K, M*3)
    squared = (flat**2).sum(1)
    live = squared > 0
    offsets = torch.from_numpy(np.asarray(offsets, dtype=np.float64)).flatten(1)
    out = torch.zeros(len(offsets), len(flat), dtype=torch.float64)
    out[:, live] = offsets @ flat[live].T / squared[live]
    return out.float()
