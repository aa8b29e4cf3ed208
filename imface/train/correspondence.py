"""Correspondence supervision from registrations (one topology shared by every scan).

A synthetic scan carries its registered Anny mesh and FaceScape TU models share one topology, so
the same (triangle, barycentric) point is known on every scan of every person. ExpNet must send
such a point of an expressive scan to the same point of the person's neutral registration, and
IDNet must send that on to the same point of one template mesh (the mean neutral registration of
the training people, model frame). The signal is direct and needs no second derivative, so it is
cheap per point; it is what makes the warps carry the shape (and template-space correspondence
meaningful) instead of the SDF-correction channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from imface.units import REGION_RADIUS


@dataclass
class Registrations:
    """The registered meshes of the training scans, in the model frame."""

    faces: np.ndarray  # (F, 3) the shared topology
    of_scan: list[np.ndarray | None]  # (V, 3) per training scan, None where the scan has none
    neutral: list[np.ndarray | None]  # (V, 3) per training scan: its person's neutral registration
    template: np.ndarray  # (V, 3) mean neutral registration of the training people
    triangles: np.ndarray  # indices of the faces used: inside the model's region on the template

    @classmethod
    def from_scans(cls, faces, of_scan, neutral_of_scan) -> Registrations | None:
        """None unless at least one scan has a registration and a neutral one of its person."""
        if faces is None:
            return None
        neutral = [n if r is not None else None for r, n in zip(of_scan, neutral_of_scan, strict=True)]
        people = {id(n): n for n in neutral if n is not None}
        if not people:
            return None
        template = np.mean(list(people.values()), axis=0)
        centroids = template[faces].mean(axis=1)
        triangles = np.flatnonzero(np.linalg.norm(centroids, axis=1) < REGION_RADIUS)
        return cls(np.asarray(faces), of_scan, neutral, template.astype(np.float32), triangles)

    def sample(
        self, scans: np.ndarray, count: int, generator: torch.Generator, between: bool = False
    ) -> dict[str, torch.Tensor]:
        """`count` corresponding points per scan: on the scan's registration (the input), on its
        person's neutral registration and on the template (the targets); `has` marks scans
        that carry a registration (the others get zeros and no loss). `between` adds the same
        points on a blend of each scan with the next one of the batch (see `_between`)."""
        tri = self.faces[
            self.triangles[torch.randint(len(self.triangles), (len(scans), count), generator=generator)]
        ]
        bary = torch.rand((len(scans), count, 2), generator=generator).numpy()
        flip = bary.sum(-1) > 1  # fold the unit square onto the triangle
        bary[flip] = 1 - bary[flip]
        weights = np.concatenate([1 - bary.sum(-1, keepdims=True), bary], axis=-1)  # (B, K, 3)

        def at(vertices, i):
            return np.einsum("kj,kjd->kd", weights[i], vertices[tri[i]])

        zeros = np.zeros((count, 3))
        observed, canonical, template, has = [], [], [], []
        for i, scan in enumerate(scans):
            reg, neutral = self.of_scan[scan], self.neutral[scan]
            ok = reg is not None and neutral is not None
            has.append(ok)
            observed.append(at(reg, i) if ok else zeros)
            canonical.append(at(neutral, i) if ok else zeros)
            template.append(at(self.template, i))
        as_tensor = lambda a: torch.from_numpy(np.stack(a).astype(np.float32))  # noqa: E731
        out = {
            "corr_points": as_tensor(observed),
            "corr_canonical": as_tensor(canonical),
            "corr_template": as_tensor(template),
            "corr_has": torch.tensor(has, dtype=torch.bool),
        }
        if between:
            out.update(self._between(scans, at, has, generator))
        return out

    def _between(self, scans, at, has, generator) -> dict[str, torch.Tensor]:
        """Blends of each scan i with its partner (the next scan of the batch) at a random weight
        t: the same (triangle, barycentric) points on (1 - t) reg_i + t reg_partner and on the
        blend of their neutral registrations. Codes tied to registrations are linear in them, so
        the blend's codes are the same blend of the two scans' codes: supervision for the warps
        at codes between the training people, where no scan exists."""
        t = torch.rand(len(scans), generator=generator).numpy()
        partner = np.roll(np.arange(len(scans)), -1)
        observed, canonical = [], []
        for i, j in enumerate(partner):
            if not (has[i] and has[j]):
                observed.append(np.zeros_like(at(self.template, i)))
                canonical.append(observed[-1])
                continue
            a, b = scans[i], scans[j]
            observed.append((1 - t[i]) * at(self.of_scan[a], i) + t[i] * at(self.of_scan[b], i))
            canonical.append((1 - t[i]) * at(self.neutral[a], i) + t[i] * at(self.neutral[b], i))
        as_tensor = lambda a: torch.from_numpy(np.stack(a).astype(np.float32))  # noqa: E731
        return {
            "between_points": as_tensor(observed),
            "between_canonical": as_tensor(canonical),
            "between_t": torch.from_numpy(t.astype(np.float32)),
            "between_has": torch.tensor([has[i] and has[j] for i, j in enumerate(partner)], dtype=torch.bool),
        }
