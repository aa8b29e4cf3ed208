"""The prepared corpus: a cache of per-scan SDF samples (memory-mapped .npy files).

    CACHE/index.json                    {"format": "imface-cache", "version": 1, "scans": [...]}
    CACHE/registered_faces.npy          triangles of the registered topology (synthetic corpora)
    CACHE/<id>/<k>_<name>/*.npy         surface_points, surface_normals, space_points, space_sdf,
                                        space_grad, landmarks68, landmarks5, gt_vertices, gt_faces,
                                        registered_vertices (synthetic only); all in the model frame
    CACHE/<id>/<k>_<name>/scan.json     the record, and the scan -> model transform

A scan folder counts only once its scan.json exists (written last), so an interrupted
`prepare` loses at most the scan in flight.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from imface.errors import UserError

FORMAT = "imface-cache"
VERSION = 1
RECORD_FILE = "scan.json"
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
        self.root = root
        self.scans = scans
        self._by_key = {s["key"]: s for s in scans}

    @classmethod
    def open(cls, root: str | Path) -> Corpus:
        root = Path(root)
        index = root / "index.json"
        if not index.exists():
            raise UserError(f"{root}: not a prepared corpus (no index.json; run `python -m imface prepare`)")
        try:
            data = json.loads(index.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{index}: unreadable ({exc})") from None
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise UserError(f"{index}: not an imface cache of version {VERSION}")
        if not data.get("scans"):
            raise UserError(f"{root}: the corpus holds no scans")
        return cls(root, sorted(data["scans"], key=lambda s: s["key"]))

    @property
    def identities(self) -> list[str]:
        return sorted({s["identity"] for s in self.scans})

    @property
    def expressions(self) -> list[str]:
        return sorted({s["expression"] for s in self.scans})

    def split(self, test_identities: float, seed: int = 0) -> tuple[list[str], list[str]]:
        """(train keys, test keys), held out by identity: a count (>= 1) or a fraction (< 1)."""
        people = self.identities
        count = int(test_identities) if test_identities >= 1 else round(len(people) * test_identities)
        count = min(max(count, 0), len(people) - 1)
        order = np.random.default_rng(seed).permutation(len(people))
        held_out = {people[i] for i in order[:count]}
        train = [s["key"] for s in self.scans if s["identity"] not in held_out]
        test = [s["key"] for s in self.scans if s["identity"] in held_out]
        return train, test

    def split_for(self, trained_identities: list[str]) -> tuple[list[str], list[str]]:
        """(train keys, test keys) for a model trained on these identities: every other person
        is held out (so the split survives scans being added to the corpus later)."""
        trained = set(trained_identities)
        train = [s["key"] for s in self.scans if s["identity"] in trained]
        test = [s["key"] for s in self.scans if s["identity"] not in trained]
        return train, test

    def record(self, key: str) -> dict:
        return self._by_key[key]

    def load(self, key: str) -> dict[str, np.ndarray]:
        """The scan's arrays, memory-mapped (read-only)."""
        folder = self.root / self._by_key[key]["dir"]
        arrays = {}
        for path in folder.glob("*.npy"):
            arrays[path.stem] = np.load(path, mmap_mode="r")
        return arrays

    def registered_faces(self) -> np.ndarray:
        path = self.root / "registered_faces.npy"
        if not path.exists():
            raise UserError(f"{self.root}: no registered topology (only synthetic corpora have one)")
        return np.load(path)


def write_index(root: Path, source: str) -> list[dict]:
    """(Re)build index.json from the finished scan folders; atomic."""
    scans = [json.loads(p.read_text())["record"] for p in sorted(root.glob(f"*/*/{RECORD_FILE}"))]
    tmp = root / "index.json.tmp"
    tmp.write_text(
        json.dumps({"format": FORMAT, "version": VERSION, "source": source, "scans": scans}, indent=1)
    )
    tmp.replace(root / "index.json")
    return scans


def write_scan(root: Path, record: dict, arrays: dict[str, np.ndarray], transform: np.ndarray) -> None:
    """Write one scan's arrays, then its scan.json last (the 'done' marker)."""
    folder = root / record["dir"]
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in arrays.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(value))
    payload = {"record": record, "to_model": np.asarray(transform).tolist()}
    tmp = folder / (RECORD_FILE + ".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(folder / RECORD_FILE)


def is_done(root: Path, record_dir: str) -> bool:
    return (root / record_dir / RECORD_FILE).exists()
