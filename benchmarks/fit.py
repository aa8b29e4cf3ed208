"""Fitting speed and accuracy on held-out synthetic scans in a random pose and unit.

    python benchmarks/fit.py --raw SYNTH_DIR --corpus CACHE [--checkpoint CKPT] [--scans 6]

Each held-out scan (identities the checkpoint never saw) is rotated by up to 40 degrees, moved,
and written in m, cm or mm; `fit_scan` then aligns, preprocesses and fits it with no landmarks.
Prints one JSON line: seconds per scan, iterations, Chamfer and F@1mm to the scan, and the
iterations needed to come within 5 % of the final loss.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import trimesh
from machine import describe as describe_machine
from scipy.spatial.transform import Rotation

from imface.config import FitConfig
from imface.errors import UserError
from imface.fit.scan import fit_scan
from imface.io import DEFAULT_CHECKPOINT, load_checkpoint

UNITS = {"m": 0.001, "cm": 0.1, "mm": 1.0}  # factor from mm


def random_pose(mesh: trimesh.Trimesh, rng: np.random.Generator) -> tuple[trimesh.Trimesh, str]:
    axis = rng.normal(size=3)
    angle = np.radians(rng.uniform(0, 40))
    rotation = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()
    unit = rng.choice(list(UNITS))
    vertices = (mesh.vertices @ rotation.T + rng.uniform(-300, 300, size=3)) * UNITS[unit]
    return trimesh.Trimesh(vertices, mesh.faces, process=False), str(unit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw", required=True, help="synth output folder (meshes)")
    parser.add_argument("--corpus", required=True, help="prepared cache (for the held-out split)")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--scans", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=FitConfig.iterations)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from imface.samples.cache import Corpus

    ckpt = load_checkpoint(args.checkpoint)
    corpus = Corpus.open(args.corpus)
    _, test_keys = corpus.split_for(ckpt.codes.identity_labels)  # people the model never saw
    rng = np.random.default_rng(args.seed)
    chosen = [
        test_keys[i] for i in rng.choice(len(test_keys), min(args.scans, len(test_keys)), replace=False)
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in chosen:
            mesh = trimesh.load(Path(args.raw) / f"{key}.ply", process=False)
            posed, unit = random_pose(mesh, rng)
            path = Path(tmp) / f"{key.replace('/', '_')}_{unit}.ply"
            posed.export(path)
            losses = []
            cfg = FitConfig(iterations=args.iterations)
            try:
                record_loss = lambda r, out=losses: out.extend(r.values.values())  # noqa: E731
                result = fit_scan(ckpt, path, cfg, progress=record_loss)
            except UserError as exc:  # e.g. the automatic alignment refused the scan: count it
                rows.append({"scan": key, "unit": unit, "failed": str(exc)})
                continue
            final = losses[-1]
            within = next(i + 1 for i, v in enumerate(losses) if v <= final * 1.05)
            rows.append(
                {
                    "scan": key,
                    "unit": unit,
                    "seconds": result.report["seconds"],
                    "chamfer_mm": round(result.report["chamfer_mm"], 4),
                    "fscore_1mm": round(result.report["fscore_1mm"], 2),
                    "iterations_to_5pct": within,
                }
            )
    fitted = [r for r in rows if "failed" not in r]
    summary = {
        "benchmark": "fit",
        "machine": describe_machine(),
        "device": "cpu",
        "checkpoint": ckpt.sha256[:12],
        "iterations": args.iterations,
        "scans": len(rows),
        "failed": len(rows) - len(fitted),
        "mean_seconds": round(float(np.mean([r["seconds"] for r in fitted])), 2),
        "mean_chamfer_mm": round(float(np.mean([r["chamfer_mm"] for r in fitted])), 4),
        "mean_fscore_1mm": round(float(np.mean([r["fscore_1mm"] for r in fitted])), 2),
        "per_scan": rows,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
