"""Linear PCA 3DMM: the stand-in for FLAME / FaceScape bilinear (EVALUATION.md).

Built from the registered meshes of the training scans (free with the synthetic corpus: every Anny
face shares one topology), with as many components as ImFace has latent dimensions, and fitted to
a scan's surface samples without landmarks, like ImFace: a two-sided closest-point (Chamfer) data
term plus a Gaussian prior, solved exactly per step because the model is linear.

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
        iterations: int = 30,
        prior: float = 1e-3,
        points: int = 10_000,
    ) -> np.ndarray:
        """Coefficients minimising the two-sided closest-point (Chamfer-L1) distance between the
        model's region vertices and the scan's surface samples, plus prior * mean(c^2) (std units).

        The model is linear, so each step is a small exact solve: pair every vertex with its
        nearest scan point and every scan point with its nearest vertex (as Chamfer does), then
        solve the reweighted normal equations for the coefficients (ICP on a linear model).
        Coarse to fine: the pairs found from the mean face are wrong for a face far from it, and
        a weak prior locks into them, so the prior starts strong and is relaxed tenfold per
        stage (COARSE_STAGES) down to `prior` (held-out scans: PCA Chamfer 1.20 -> 1.16 mm)."""
        from scipy.spatial import cKDTree

        target = spread_subset(np.asarray(surface_points, dtype=np.float64), points)
        target_tree = cKDTree(target)
        region = self.region.numpy()
        basis = (self.components.double() * self.stds.double()[:, None]).numpy()  # (K, V*3)
        basis = basis.reshape(len(basis), -1, 3)[:, region].transpose(1, 2, 0)  # (M, 3, K)
        basis = np.ascontiguousarray(basis.reshape(-1, basis.shape[2]))  # (M*3, K), once
        mean = self.mean.double().numpy().reshape(-1, 3)[region]  # (M, 3)
        coefficients = np.zeros(basis.shape[1])
        stages = [(p, COARSE_ITERATIONS) for p in COARSE_STAGES if p > prior] + [(prior, iterations)]
        for stage_prior, stage_iterations in stages:
            for _ in range(stage_iterations):
                previous = coefficients
                coefficients = _icp_step(basis, mean, target, target_tree, coefficients, stage_prior)
                if np.abs(coefficients - previous).max() < 1e-4:
                    break
        return coefficients.astype(np.float32)


# coarse-to-fine priors of `PCAModel.fit` (then its own), COARSE_ITERATIONS steps each at most
COARSE_STAGES = (1.0, 0.1, 0.01)
COARSE_ITERATIONS = 10


def _icp_step(basis, mean, target, target_tree, coefficients, prior: float) -> np.ndarray:
    """One closest-point pairing and exact reweighted solve (see `PCAModel.fit`); basis is
    (M*3, K), mean (M, 3)."""
    from scipy.spatial import cKDTree

    k = basis.shape[1]
    verts = mean + (basis @ coefficients).reshape(-1, 3)
    d_scan, to_scan = target_tree.query(verts)  # each vertex -> nearest scan point
    d_model, to_model = cKDTree(verts).query(target)  # each scan point -> nearest vertex
    # rows B_v c = t - m_v; weights 1/distance make the squared terms the L1 Chamfer
    # (iteratively reweighted), each direction a mean. Every row belongs to a vertex, so the
    # rows are summed per vertex first (weight, weighted residual): the normal equations then
    # have one block per vertex however many scan points there are
    w_scan, w_model = _l1_weights(d_scan), _l1_weights(d_model)
    weight = w_scan + np.bincount(to_model, w_model, minlength=len(mean))
    residual = w_scan[:, None] * (target[to_scan] - mean)
    for axis in range(3):
        residual[:, axis] += np.bincount(
            to_model, w_model * (target[:, axis] - mean[to_model, axis]), minlength=len(mean)
        )
    # the normal equations in torch: it releases the GIL (the editor's GUI thread runs meanwhile)
    # and its BLAS does not spin when the CPU is shared; numpy's and scipy's took 3x as long then
    weighted = torch.from_numpy(np.sqrt(np.repeat(weight, 3))[:, None] * basis)
    lhs = weighted.T @ weighted + prior / k * torch.eye(k, dtype=weighted.dtype)
    rhs = torch.from_numpy(basis.T @ residual.reshape(-1))
    return torch.linalg.solve(lhs, rhs).numpy()


SUBSET_CELL = 0.005  # model units (0.5 mm)


def spread_subset(points: np.ndarray, count: int) -> np.ndarray:
    """`count` of the points, chosen by a hash of their 0.5 mm cell of the model frame: the same
    choice for the same surface in any order (another pose's samples; a random draw over the
    array changes them all)."""
    from imface.fit.samples import cell_hash

    if len(points) <= count:
        return points
    cells = np.floor(points / SUBSET_CELL).astype(np.int64)
    key = (cells[:, 0] * 73_856_093) ^ (cells[:, 1] * 19_349_663) ^ (cells[:, 2] * 83_492_791)
    return points[np.argsort(cell_hash(key), kind="stable")[:count]]


def _l1_weights(distance: np.ndarray, floor: float = 0.005) -> np.ndarray:
    """IRLS weights for a mean of distances: 1 / (count * max(d, 0.5 mm))."""
    return 1.0 / (len(distance) * np.maximum(distance, floor))


def corpus_region(corpus, keys: list[str], registered: list[np.ndarray] | None = None) -> np.ndarray:
    """`scan_region` over about 20 of the corpus's scans `keys` (the crop barely varies);
    `registered` gives their registrations when already loaded."""
    voters = range(0, len(keys), max(len(keys) // 20, 1))
    meshes = [
        np.asarray(corpus.load(keys[i])["registered_vertices"]) if registered is None else registered[i]
        for i in voters
    ]
    return scan_region(meshes, [np.asarray(corpus.load(keys[i])["gt_vertices"]) for i in voters])


def scan_region(registered: list[np.ndarray], scans: list[np.ndarray], tolerance: float = 0.01) -> np.ndarray:
    """(V,) bool: registered vertices that lie on their cropped scan (within `tolerance` model
    units, 1 mm) in most of the given scans."""
    from scipy.spatial import cKDTree

    votes = [cKDTree(scan).query(verts)[0] < tolerance for verts, scan in zip(registered, scans, strict=True)]
    return np.mean(votes, axis=0) > 0.5
