"""Training batches from the prepared cache (a torch Dataset; works with DistributedSampler)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from imface.samples.cache import Corpus


class SDFDataset(Dataset):
    """Item i = scan keys[i]: `points_per_scan` points, `surface_fraction` of them on the surface
    (with normals), the rest in the unit sphere (with SDF and gradient), drawn afresh each call.

    Returned tensors: surface_points (Ns,3), surface_normals (Ns,3), space_points (Nu,3),
    space_sdf (Nu,), space_grad (Nu,3), landmarks5 (5,3), scan (index into keys), identity
    (index into the sorted identities of these keys), neutral (bool).
    """

    def __init__(
        self,
        corpus: Corpus,
        keys=None,
        points_per_scan: int = 4096,
        surface_fraction: float = 0.5,
        seed: int | None = None,
    ):
        self.corpus = corpus
        self.scan_keys = list(corpus.keys if keys is None else keys)
        if not self.scan_keys:
            raise ValueError("SDFDataset needs at least one scan")
        records = [corpus.record(k) for k in self.scan_keys]
        self.identity_names = sorted({r["identity"] for r in records})
        self.expression_names = [r["expression"] for r in records]
        self._identity = [self.identity_names.index(r["identity"]) for r in records]
        self._neutral = [bool(r["neutral"]) for r in records]
        self.n_surface = int(round(points_per_scan * surface_fraction))
        self.n_space = points_per_scan - self.n_surface
        self.seed = seed
        self._calls = 0

    def __len__(self) -> int:
        return len(self.scan_keys)

    def _rng(self, index):
        if self.seed is None:
            return np.random.default_rng()
        self._calls += 1
        return np.random.default_rng([self.seed, index, self._calls])

    def __getitem__(self, index: int) -> dict:
        arr = self.corpus.load(self.scan_keys[index])
        rng = self._rng(index)
        si = _pick(rng, len(arr["surface_points"]), self.n_surface)
        ui = _pick(rng, len(arr["space_points"]), self.n_space)
        t = lambda a, i: torch.from_numpy(np.ascontiguousarray(a[i], dtype=np.float32))  # noqa
        return {
            "surface_points": t(arr["surface_points"], si),
            "surface_normals": t(arr["surface_normals"], si),
            "space_points": t(arr["space_points"], ui),
            "space_sdf": t(arr["space_sdf"], ui),
            "space_grad": t(arr["space_grad"], ui),
            "landmarks5": torch.from_numpy(np.array(arr["landmarks5"], dtype=np.float32)),
            "scan": torch.tensor(index, dtype=torch.long),
            "identity": torch.tensor(self._identity[index], dtype=torch.long),
            "neutral": torch.tensor(self._neutral[index], dtype=torch.bool),
        }


def _pick(rng, n, k):
    """k indices of n, sorted (sorted reads are faster on memory-mapped arrays)."""
    idx = rng.choice(n, k, replace=k > n)
    idx.sort()
    return idx
