"""Find the scans of a source folder: the synthetic corpus, FaceScape TU, or any folder of scans.

- synthetic (``corpus.json`` at the root, written by ``imface synth``): ``<id>/<k>_<name>.ply``
  with ``.json`` metadata (exact model-frame transform, 68 landmarks) and ``.reg.npy``;
- FaceScape TU: ``<id>/models_reg/<k>_<name>.obj`` or the flattened ``<id>/<k>_<name>.obj``;
  the 68 landmarks come from FaceScape's own ``landmark_indices.npz`` (key ``v10``), whose path
  the user gives (it is not ours to ship); without it scans are aligned automatically;
- anything else: every scan file under the folder; identity = its folder, expression = its name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imface.errors import UserError
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

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "identity": self.identity,
            "expression": self.expression,
            "path": str(self.path),
            "neutral": self.neutral,
        }


def find_scans(src, landmark_file=None) -> tuple[str, list[ScanSource]]:
    """(kind, scans) of a source folder; kind is 'synthetic', 'facescape' or 'scans'."""
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"{src}: not a folder of scans")
    if (src / "corpus.json").exists():
        return "synthetic", _synthetic(src)
    indices = load_landmark_indices(landmark_file) if landmark_file else None
    tu = _facescape(src, indices)
    if tu:
        return "facescape", tu
    plain = _plain(src)
    if not plain:
        raise UserError(f"{src}: no scans found (OBJ, PLY, STL, OFF, GLB/GLTF, XYZ, NPY)")
    return "scans", plain


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


def _synthetic(src: Path) -> list[ScanSource]:
    out = []
    for meta_path in sorted(src.glob("*/*.json")):
        if meta_path.name == "identity.json":
            continue
        meta = json.loads(meta_path.read_text())
        stem = meta_path.name[: -len(".json")]
        ply = meta_path.with_name(stem + ".ply")
        if not ply.exists():
            continue
        out.append(
            ScanSource(
                f"{meta['identity']}/{stem}",
                meta["identity"],
                stem,
                ply,
                bool(meta["neutral"]),
                meta["to_model"],
                meta["landmarks68"],
                meta_path.with_name(stem + ".reg.npy"),
                unit=meta.get("unit"),
            )
        )
    return out


def _facescape(src: Path, indices) -> list[ScanSource]:
    out = []
    for ident in sorted(p for p in src.iterdir() if p.is_dir()):
        folder = ident / "models_reg" if (ident / "models_reg").is_dir() else ident
        for obj in sorted(folder.glob("*.obj")):
            if not EXPRESSION_NAME.match(obj.stem):
                continue
            out.append(
                ScanSource(
                    f"{ident.name}/{obj.stem}",
                    ident.name,
                    obj.stem,
                    obj,
                    obj.stem == NEUTRAL,
                    landmark_indices=indices,
                    unit="mm",
                )
            )
    return out


def _plain(src: Path) -> list[ScanSource]:
    out = []
    suffixes = MESH_SUFFIXES | POINT_SUFFIXES
    for path in sorted(src.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        rel = path.relative_to(src)
        identity = rel.parts[0] if len(rel.parts) > 1 else path.stem
        expr = path.stem
        out.append(ScanSource(f"{identity}/{expr}", identity, expr, path, "neutral" in expr.lower()))
    return out
