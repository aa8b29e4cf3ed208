"""The prepared cache: what ``imface prepare`` writes and what training and evaluation read.

    CACHE/index.json      {"version": 1, "scans": [record, ...]};
                          record = {"key": "<id>/<k>_<name>",
                          "identity", "expression", "neutral", "dir" (relative), "landmarks":
                          "given" | "estimated", "source"}
    CACHE/registered_faces.npy     (synthetic corpora) faces of registered_vertices.npy
    CACHE/<id>/<k>_<name>/         one folder per scan, all arrays float32 .npy (np.load mmap):
        surface_points (Ns,3), surface_normals (Ns,3), space_points (Nu,3), space_sdf (Nu,),
        space_grad (Nu,3), landmarks68 (68,3), landmarks5 (5,3), gt_vertices, gt_faces (the
        cropped hidden-surface-free mesh), sheet_vertices, sheet_faces, registered_vertices
        (synthetic only, (4200,3)), transform.json (scan frame -> model frame, and back)

Everything is in the model frame. A scan folder appears only when complete (written under a
temporary name, then renamed), so an interrupted run loses at most the scans in flight.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from imface.errors import UserError
from imface.paths import atomic_write_text, confined

INDEX = "index.json"
ARRAYS = (
    "surface_points",
    "surface_normals",
    "space_points",
    "space_sdf",
    "space_grad",
    "landmarks68",
    "landmarks5",
    "gt_vertices",
    "gt_faces",
)


class Corpus:
    def __init__(self, root: Path, scans: list[dict]):
        self.root = Path(root)
        self.scans = scans
        self._by_key = {s["key"]: s for s in scans}

    @classmethod
    def open(cls, cache_dir) -> Corpus:
        root = Path(cache_dir)
        index = root / INDEX
        if not index.exists():
            raise UserError(
                f"{root}: not a prepared cache (no {INDEX}; run python -m imface prepare SRC --out CACHE)"
            )
        try:
            data = json.loads(index.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{index}: unreadable ({exc})") from None
        scans = data.get("scans") if isinstance(data, dict) else None
        if not isinstance(scans, list):
            raise UserError(f"{index}: not a cache index (no list of scans)")
        for record in scans:
            check_record(index, record)
            confined(root, record["dir"])  # index.json may come from anywhere: read only inside root
        keys = [r["key"] for r in scans]
        if len(set(keys)) != len(keys):
            raise UserError(f"{index}: the same scan key appears twice")
        return cls(root, scans)

    @property
    def keys(self) -> list[str]:
        return [s["key"] for s in self.scans]

    @property
    def identities(self) -> list[str]:
        return sorted({s["identity"] for s in self.scans})

    @property
    def expressions(self) -> list[str]:
        return sorted({s["expression"] for s in self.scans}, key=_expression_order)

    def record(self, key: str) -> dict:
        try:
            return self._by_key[key]
        except KeyError:
            raise UserError(f"{self.root}: no scan {key!r} in the cache") from None

    def split(self, test_identities: int | float, seed: int = 0) -> tuple[list[str], list[str]]:
        """Train/test scan keys split by person; `test_identities` is a count (>= 1) or a
        fraction (< 1)."""
        ids = self.identities
        n = int(test_identities) if test_identities >= 1 else int(round(test_identities * len(ids)))
        if not 0 <= n <= len(ids):
            raise UserError(f"cannot hold out {n} of {len(ids)} identities")
        test = set(np.random.default_rng(seed).permutation(ids)[:n].tolist())
        train = [s["key"] for s in self.scans if s["identity"] not in test]
        return train, [s["key"] for s in self.scans if s["identity"] in test]

    def split_people(self, held_out: list[str]) -> tuple[list[str], list[str]]:
        """(train keys, test keys) holding out exactly these people."""
        unknown = sorted(set(held_out) - set(self.identities))
        if unknown:
            raise UserError(f"{self.root}: no person {', '.join(unknown)} in this cache")
        test = set(held_out)
        train = [s["key"] for s in self.scans if s["identity"] not in test]
        return train, [s["key"] for s in self.scans if s["identity"] in test]

    def split_for(self, trained_identities: list[str]) -> tuple[list[str], list[str]]:
        """(train keys, test keys) for a model trained on these identities: every other person is
        held out (so the split survives scans being added to the cache later)."""
        trained = set(trained_identities)
        train = [s["key"] for s in self.scans if s["identity"] in trained]
        return train, [s["key"] for s in self.scans if s["identity"] not in trained]

    def scan_dir(self, key: str) -> Path:
        return confined(self.root, self.record(key)["dir"])

    def load(self, key: str, mmap: bool = True) -> dict:
        """The arrays of one scan (memory-mapped) plus its transform."""
        folder = self.scan_dir(key)
        out = {}
        for f in folder.glob("*.npy"):
            out[f.stem] = np.load(f, mmap_mode="r" if mmap else None)
        t = folder / "transform.json"
        if t.exists():
            try:
                out["transform"] = json.loads(t.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise UserError(f"{t}: unreadable ({exc}); delete the folder and prepare again") from None
        return out

    @property
    def registered_faces(self) -> np.ndarray | None:
        f = self.root / "registered_faces.npy"
        return np.load(f) if f.exists() else None

    def mean_landmarks5(self, keys=None, neutral_only: bool = True) -> np.ndarray:
        """Mean 5 blend landmarks (template landmarks for a new model)."""
        keys = self.keys if keys is None else keys
        pick = [k for k in keys if self.record(k)["neutral"] or not neutral_only] or list(keys)
        return np.mean([np.asarray(self.load(k)["landmarks5"]) for k in pick], axis=0)


def _expression_order(name: str):
    head = name.split("_", 1)[0]
    return (0, int(head), name) if head.isdigit() else (1, 0, name)


_RECORD_TYPES = {"key": str, "identity": str, "expression": str, "neutral": bool, "dir": str}


def check_record(index: Path, record) -> None:
    """One line naming the index and the scan when a record lacks a field or has the wrong type."""
    if not isinstance(record, dict):
        raise UserError(f"{index}: a scan record is not a JSON object")
    for name, kind in _RECORD_TYPES.items():
        if not isinstance(record.get(name), kind):
            what = record.get("key", "?")
            raise UserError(f"{index}: scan {what!r:.80}: {name!r} missing or not a {kind.__name__}")


def write_index(root: Path, records: list[dict]) -> None:
    root = Path(root)
    records = sorted(records, key=lambda r: (r["identity"], _expression_order(r["expression"])))
    atomic_write_text(root / INDEX, json.dumps({"version": 1, "scans": records}, indent=0))
