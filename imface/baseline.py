"""Linear PCA 3DMM: the stand-in for FLAME / FaceScape bilinear (EVALUATION.md).

Built from the registered meshes of the training scans (free with the synthetic corpus: every Anny
face shares one topology), with as many components as ImFace has latent dimensions, and fitted to
a scan's surface samples by the same kind of optimisation as ImFace (Adam on the coefficients,
a data term plus a Gaussian prior).

Scans are cropped (no ears, back of the head, mouth interior), the registered meshes are whole
heads: `region` marks the vertices a scan keeps, and only those are fitted and compared. Without it
the fit drags every vertex of the head onto the face and the baseline is unfairly bad.
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
    faces: np.ndarray  # (F, 3) the triangles inside the region
    region: torch.Tensor  # (V,) bool: vertices the scans keep

    @classmethod
    def build(
        cls, meshes: np.ndarray, faces: np.ndarray, components: int, region: np.ndarray | None = None
    ) -> PCAModel:
        """meshes (N, V, 3) in the model frame; region (V,) bool (default: every vertex)."""
        data = torch.from_numpy(np.asarray(meshes, dtype=np.float64)).reshape(len(meshes), -1)
        mean = data.mean(0)
        _, s, vh = torch.linalg.svd(data - mean, full_matrices=False)
        k = min(components, vh.shape[0])
        stds = s[:k] / max(len(meshes) - 1, 1) ** 0.5
        faces = np.asarray(faces)
        region = np.ones(meshes.shape[1], dtype=bool) if region is None else np.asarray(region, dtype=bool)
        faces = faces[region[faces].all(axis=1)]
        return cls(mean.float(), vh[:k].float(), stds.float(), faces, torch.from_numpy(region))

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
        target_all = torch.tensor(np.asarray(surface_points, dtype=np.float32))  # scans are read-only maps
        coefficients = torch.zeros(self.components.shape[0], requires_grad=True)
        optimizer = torch.optim.Adam([coefficients], lr=lr)
        for _ in range(iterations):
            target = target_all[torch.randint(len(target_all), (points,), generator=gen)]
            verts = self.vertices(coefficients)[self.region]
            dist = torch.cdist(target, verts)
            data = dist.min(1).values.mean() + dist.min(0).values.mean()
            loss = data + prior * coefficients.pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return coefficients.detach().numpy()


def scan_region(registered: list[np.ndarray], scans: list[np.ndarray], tolerance: float = 0.01) -> np.ndarray:
    """(V,) bool: registered vertices that lie on their cropped scan (within `tolerance` model
    units, 1 mm) in most of the given scans."""
    from scipy.spatial import cKDTree

    votes = [cKDTree(scan).query(verts)[0] < tolerance for verts, scan in zip(registered, scans, strict=True)]
    return np.mean(votes, axis=0) > 0.5
