"""Find the scans of a source folder: the synthetic corpus, FaceScape TU, or any folder of scans.

- synthetic (``corpus.json`` at the root, written by ``imface synth``): ``<id>/<k>_<name>.ply``
  with ``.json`` metadata (exact model-frame transform, 68 landmarks) and ``.reg.npy``;
- FaceScape TU: ``<id>/models_reg/<k>_<name>.obj`` or the flattened ``<id>/<k>_<name>.obj``;
  the 68 landmarks come from FaceScape's own ``landmark_indices.npz`` (key ``v10``), whose path
  the user gives (it is not ours to ship); without it scans are aligned automatically;
- anything else: every scan file under the folder; identity = its folder, expression = its name
  (made longer with the sub-folders and the file type where two files would share a key).

Keys become folders of the cache, so every part of one is a safe file name (``imface.paths``):
an identity of ``../../x`` in a JSON file cannot lead outside the cache. Two scans with one key
are refused, naming both files.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imface.errors import UserError
from imface.paths import safe_name
from imface.scan.load import MESH_SUFFIXES, POINT_SUFFIXES

EXPRESSION_NAME = re.compile(r"^(\d+)_([A-Za-z0-9_]+)$")
NEUTRAL = "1_neutral"


@dataclass
class ScanSource:
    key: str  # "<id>/<k>_<name>"
    identity: str
    expression: str
    path: Path
    neutral: bool
    to_model: list | None = None  # exact transform (synthetic corpus)
    landmarks68: list | None = None  # scan frame
    registered: Path | None = None  # synthetic: registered Anny-topology vertices (scan frame)
    landmark_indices: np.ndarray | None = None  # FaceScape: vertex indices of the 68 landmarks
    unit: str | None = None
    population: str | None = None  # synthetic: the sampler that drew the person (identity.json)

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "identity": self.identity,
            "expression": self.expression,
            "path": str(self.path),
            "neutral": self.neutral,
        }


def find_scans(src, landmark_file=None, problems: list | None = None) -> tuple[str, list[ScanSource]]:
    """(kind, scans) of a source folder; kind is 'synthetic', 'facescape' or 'scans'.

    A scan whose metadata is unreadable is skipped and listed in `problems` as (file, message)
    when a list is given; without one it raises UserError."""
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"{src}: not a folder of scans")
    if (src / "corpus.json").exists():
        return "synthetic", _unique(_synthetic(src, problems))
    indices = load_landmark_indices(landmark_file) if landmark_file else None
    tu = _facescape(src, indices)
    if tu:
        return "facescape", _unique(tu)
    plain = _plain(src)
    if not plain:
        raise UserError(f"{src}: no scans found (OBJ, PLY, STL, OFF, GLB/GLTF, XYZ, NPY)")
    return "scans", _unique(plain)


def _unique(sources: list[ScanSource]) -> list[ScanSource]:
    seen: dict[str, ScanSource] = {}
    for s in sources:
        if s.key in seen:
            raise UserError(
                f"{seen[s.key].path} and {s.path} would both be scan {s.key!r}; rename one of them"
            )
        seen[s.key] = s
    return sources


def load_landmark_indices(path) -> np.ndarray:
    path = Path(path)
    try:
        data = np.load(path)
        idx = np.asarray(data["v10"] if hasattr(data, "files") else data).reshape(-1)
    except Exception as exc:
        raise UserError(
            f"{path}: cannot read landmark indices (expected FaceScape's "
            f"landmark_indices.npz with key 'v10'): {exc}"
        ) from None
    if len(idx) != 68:
        raise UserError(f"{path}: expected 68 landmark indices, found {len(idx)}")
    return idx.astype(np.int64)


def _synthetic(src: Path, problems: list | None) -> list[ScanSource]:
    out = []
    for meta_path in sorted(src.glob("*/*.json")):
        if meta_path.name == "identity.json":
            continue
        stem = meta_path.name[: -len(".json")]
        ply = meta_path.with_name(stem + ".ply")
        if not ply.exists():
            continue
        try:
            meta = _scan_metadata(meta_path)
        except UserError as exc:
            if problems is None:
                raise
            problems.append((f"{meta_path.parent.name}/{stem}", str(exc)))
            continue
        identity = safe_name(meta["identity"])
        out.append(
            ScanSource(
                f"{identity}/{safe_name(stem)}",
                identity,
                stem,
                ply,
                meta["neutral"],
                meta["to_model"],
                meta["landmarks68"],
                meta_path.with_name(stem + ".reg.npy"),
                unit=meta.get("unit"),
                population=_population(meta_path.with_name("identity.json")),
            )
        )
    return out


def _population(identity_file: Path) -> str | None:
    """The synthetic person's population ("moderate" / "wide"), if its identity.json says."""
    try:
        value = json.loads(identity_file.read_text()).get("population")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _scan_metadata(path: Path) -> dict:
    """A synthetic scan's JSON, checked: identity, neutral, to_model (4x4), landmarks68 (68x3)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable scan metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: scan metadata is not a JSON object")
    missing = [k for k in ("identity", "neutral", "to_model", "landmarks68") if k not in meta]
    if missing:
        raise UserError(f"{path}: incomplete scan metadata (no {', '.join(missing)})")
    if not isinstance(meta["identity"], str | int) or not isinstance(meta["neutral"], bool):
        raise UserError(f"{path}: 'identity' must be a string and 'neutral' true or false")
    for name, shape in (("to_model", (4, 4)), ("landmarks68", (68, 3))):
        try:
            ok = np.asarray(meta[name], dtype=np.float64).shape == shape
        except (TypeError, ValueError):
            ok = False
        if not ok or not np.isfinite(np.asarray(meta[name], dtype=np.float64)).all():
            raise UserError(f"{path}: {name!r} must be a {shape[0]}x{shape[1]} array of finite numbers")
    if meta.get("unit") not in (None, "m", "cm", "mm"):
        raise UserError(f"{path}: unknown unit {meta['unit']!r:.40} (m, cm or mm)")
    return meta


def _facescape(src: Path, indices) -> list[ScanSource]:
    out = []
    for ident in sorted(p for p in src.iterdir() if p.is_dir()):
        folder = ident / "models_reg" if (ident / "models_reg").is_dir() else ident
        identity = safe_name(ident.name)
        for obj in sorted(folder.glob("*.obj")):
            if not EXPRESSION_NAME.match(obj.stem):
                continue
            out.append(
                ScanSource(
                    f"{identity}/{obj.stem}",
                    identity,
                    obj.stem,
                    obj,
                    obj.stem == NEUTRAL,
                    landmark_indices=indices,
                    unit="mm",
                )
            )
    return out


def _plain(src: Path) -> list[ScanSource]:
    """Identity = the top folder (or the file's name), expression = the file's name; where two
    files would share a key the expression grows: sub-folders first, then the file type."""
    suffixes = MESH_SUFFIXES | POINT_SUFFIXES
    files = [p for p in sorted(src.rglob("*")) if p.is_file() and p.suffix.lower() in suffixes]
    named, origin = [], {}
    for path in files:
        rel = path.relative_to(src)
        top = rel.parts[0] if len(rel.parts) > 1 else path.stem
        identity = safe_name(top)
        if origin.setdefault(identity, top) != top:  # "a b" and "a_b" must stay two people
            raise UserError(f"{src}: '{origin[identity]}' and '{top}' would both be identity {identity!r}")
        inner = rel.parts[1:] if len(rel.parts) > 1 else rel.parts
        names = (
            path.stem,
            "_".join([*inner[:-1], path.stem]),
            "_".join([*inner[:-1], path.stem, path.suffix[1:].lower()]),
        )
        named.append((path, identity, [safe_name(n) for n in names]))
    expressions = _shortest_unique(named)
    return [
        ScanSource(f"{identity}/{expr}", identity, expr, path, "neutral" in expr.lower())
        for (path, identity, _), expr in zip(named, expressions, strict=True)
    ]


def _shortest_unique(named) -> list[str]:
    """Per file, the first of its candidate names that no other file of its identity shares."""
    chosen = [names[0] for _, _, names in named]
    for level in (1, 2):
        counts = Counter((identity, name) for (_, identity, _), name in zip(named, chosen, strict=True))
        chosen = [
            names[level] if counts[(identity, name)] > 1 else name
            for (_, identity, names), name in zip(named, chosen, strict=True)
        ]
    return chosen
