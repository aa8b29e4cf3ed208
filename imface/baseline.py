"""Linear PCA 3DMM: the stand-in for FLAME / FaceScape bilinear (EVALUATION.md).

Built from the registered meshes of the training scans (free with the synthetic corpus: every Anny
face shares one topology), with as many components as ImFace has latent dimensions, and fitted to
a scan's surface samples by the same kind of optimisation as ImFace (Adam on the coefficients,
a data term plus a Gaussian prior).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PCAModel:
    mean: torch.Tensor  # (V * 3,)
    components: torch.Tensor  # (K, V * 3), orthonormal rows
    stds: torch.Tensor  # (K,)
    faces: np.ndarray  # (F, 3)

    @classmethod
    def build(cls, meshes: np.ndarray, faces: np.ndarray, components: int) -> PCAModel:
        """meshes (N, V, 3) in the model frame."""
        data = torch.from_numpy(np.asarray(meshes, dtype=np.float64)).reshape(len(meshes), -1)
        mean = data.mean(0)
        _, s, vh = torch.linalg.svd(data - mean, full_matrices=False)
        k = min(components, vh.shape[0])
        stds = s[:k] / max(len(meshes) - 1, 1) ** 0.5
        return cls(mean.float(), vh[:k].float(), stds.float(), np.asarray(faces))

    def vertices(self, coefficients: torch.Tensor) -> torch.Tensor:
        """coefficients in std units (K,) -> (V, 3)."""
        return (self.mean + (coefficients * self.stds) @ self.components).view(-1, 3)

    def fit(
        self,
        surface_points: np.ndarray,
        iterations: int = 300,
        lr: float = 0.05,
        prior: float = 1e-3,
        points: int = 4096,
        seed: int = 0,
    ) -> np.ndarray:
        """Coefficients minimising the two-sided Chamfer distance between the model's vertices and
        the scan's surface samples (both within the scan's region), plus prior * |c|^2."""
        gen = torch.Generator().manual_seed(seed)
        target_all = torch.from_numpy(np.asarray(surface_points, dtype=np.float32))
        coefficients = torch.zeros(self.components.shape[0], requires_grad=True)
        optimizer = torch.optim.Adam([coefficients], lr=lr)
        radius = float(target_all.norm(dim=1).max()) + 0.05
        for _ in range(iterations):
            target = target_all[torch.randint(len(target_all), (points,), generator=gen)]
            verts = self.vertices(coefficients)
            verts = verts[verts.norm(dim=1) < radius]  # the scan only covers the cropped region
            dist = torch.cdist(target, verts)
            data = dist.min(1).values.mean() + dist.min(0).values.mean()
            loss = data + prior * coefficients.pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return coefficients.detach().numpy()
