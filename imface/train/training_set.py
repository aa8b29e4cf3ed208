"""The training scans of a prepared corpus: which scans train (the held-out split), their code
bookkeeping (person, expression row), neutral landmarks, registrations for the correspondence
losses, and reproducible batches (seeded by seed, epoch, batch and rank, so a resumed or
distributed run draws exactly the batches of an uninterrupted one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imface.errors import UserError
from imface.train.correspondence import Registrations


@dataclass
class TrainingSet:
    """The training scans of a prepared corpus and their code bookkeeping."""

    corpus: object  # imface.samples.cache.Corpus
    keys: list[str]
    identity_names: list[str]
    identity_of_scan: np.ndarray  # (scans,) index into identity_names
    exp_index: np.ndarray  # (scans,) row of the expression code table, -1 for neutral scans
    expression_labels: list[str]  # per expression code
    neutral_landmarks: np.ndarray  # (identities, 5, 3) of each person's neutral scan
    registrations: Registrations | None = None  # correspondence supervision, where scans have it

    @classmethod
    def open(
        cls, cache: str | Path, test_identities: float, seed: int, train_keys: list[str] | None = None
    ) -> TrainingSet:
        """The training scans: `train_keys` exactly (a resumed run's stored split), or the split
        of `test_identities` held-out people."""
        from imface.samples.cache import Corpus

        corpus = Corpus.open(cache)
        records = {r["key"]: r for r in corpus.scans}
        if train_keys is None:
            keys, _ = corpus.split(test_identities, seed)
        else:
            gone = [k for k in train_keys if k not in records]
            if gone:
                raise UserError(
                    f"{cache}: {len(gone)} training scans of this run are no longer in the cache "
                    f"(e.g. {gone[0]}); resume with the cache it was trained on"
                )
            keys = list(train_keys)
        if not keys:
            raise UserError(f"{cache}: no training scans after holding out test identities")
        identity_names = sorted({records[k]["identity"] for k in keys})
        id_lookup = {name: i for i, name in enumerate(identity_names)}
        identity_of_scan = np.array([id_lookup[records[k]["identity"]] for k in keys])
        exp_index = np.full(len(keys), -1)
        labels = []
        for i, key in enumerate(keys):
            if not records[key]["neutral"]:
                exp_index[i] = len(labels)
                labels.append(records[key]["expression"])
        neutral = cls._neutral_landmarks(corpus, keys, records, identity_of_scan, len(identity_names))
        registrations = cls._registrations(corpus, keys, records, identity_of_scan)
        return cls(corpus, keys, identity_names, identity_of_scan, exp_index, labels, neutral, registrations)

    @staticmethod
    def _registrations(corpus, keys, records, identity_of_scan) -> Registrations | None:
        """Each training scan's registered mesh and its person's neutral one (model frame)."""
        of_scan = []
        for key in keys:
            reg = corpus.load(key).get("registered_vertices")
            of_scan.append(None if reg is None else np.asarray(reg, dtype=np.float32))
        neutral_of_person = {
            identity_of_scan[i]: of_scan[i] for i, key in enumerate(keys) if records[key]["neutral"]
        }
        neutral_of_scan = [neutral_of_person.get(identity_of_scan[i]) for i in range(len(keys))]
        return Registrations.from_scans(corpus.registered_faces, of_scan, neutral_of_scan)

    @staticmethod
    def _neutral_landmarks(corpus, keys, records, identity_of_scan, identities) -> np.ndarray:
        """Landmarks of each person's neutral scan (the mean of their scans if none is neutral)."""
        sums = np.zeros((identities, 5, 3))
        counts = np.zeros(identities)
        neutral_found = np.zeros(identities, dtype=bool)
        for key, ident in zip(keys, identity_of_scan, strict=True):
            lm = np.asarray(corpus.load(key)["landmarks5"], dtype=np.float64)
            if records[key]["neutral"]:
                sums[ident], counts[ident], neutral_found[ident] = lm, 1, True
            elif not neutral_found[ident]:
                sums[ident] += lm
                counts[ident] += 1
        return (sums / np.maximum(counts, 1)[:, None, None]).astype(np.float32)

    def batch(
        self,
        scans: np.ndarray,
        points_per_scan: int,
        generator: torch.Generator,
        device,
        correspondences: int = 0,
        between: bool = False,
    ):
        """Load a batch: half surface points (with normals), half space points (with SDF), and
        `correspondences` registered points per scan where the scans carry registrations (and on
        blends of scan pairs with `between`)."""
        n_surface = points_per_scan // 2
        n_space = points_per_scan - n_surface
        fields: dict[str, list] = {k: [] for k in ("surface_points", "surface_normals", "space_points")}
        fields.update(space_sdf=[], landmarks5=[])
        for scan in scans:
            arrays = self.corpus.load(self.keys[scan])
            pick_s = _pick(arrays["surface_points"].shape[0], n_surface, generator)
            pick_u = _pick(arrays["space_points"].shape[0], n_space, generator)
            fields["surface_points"].append(arrays["surface_points"][pick_s])
            fields["surface_normals"].append(arrays["surface_normals"][pick_s])
            fields["space_points"].append(arrays["space_points"][pick_u])
            fields["space_sdf"].append(arrays["space_sdf"][pick_u])
            fields["landmarks5"].append(arrays["landmarks5"])
        batch = {k: torch.from_numpy(np.stack(v).astype(np.float32)).to(device) for k, v in fields.items()}
        identity = self.identity_of_scan[scans]
        batch["scan"] = torch.from_numpy(scans).long().to(device)
        batch["identity"] = torch.from_numpy(identity).long().to(device)
        batch["neutral_landmarks5"] = torch.from_numpy(self.neutral_landmarks[identity]).to(device)
        if self.registrations is not None and correspondences > 0:
            samples = self.registrations.sample(scans, correspondences, generator, between)
            batch.update({k: v.to(device) for k, v in samples.items()})
        return batch

    @property
    def held_out_identities(self) -> list[str]:
        return sorted(set(self.corpus.identities) - set(self.identity_names))

    def template_landmarks(self) -> torch.Tensor:
        """The fixed template landmarks l'': the mean neutral landmarks of the training people."""
        return torch.from_numpy(self.neutral_landmarks.mean(0)).float()


def _pick(available: int, wanted: int, generator: torch.Generator) -> np.ndarray:
    # sorted indices read memory-mapped arrays in order (much faster from disk)
    return np.sort(torch.randint(available, (wanted,), generator=generator).numpy())


def batch_generator(seed: int, epoch: int, batch: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + batch) * 257 + rank)


def epoch_order(scans: int, seed: int, epoch: int) -> np.ndarray:
    """The same permutation of the scans on every process."""
    return torch.randperm(scans, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).numpy()
