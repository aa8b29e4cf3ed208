"""Face or not: the alignment's face evidence on adults of the wide population, the real scans
(when present) and the non-face corpus, each placed at its true unit (mm). One JSON object: the
evidence of every scan, whether it is accepted, and the margin between the lowest face score
and the highest non-face score (what `imface.scan.align.FaceEvidence` is calibrated on).

    python benchmarks/face_evidence.py [--identities 30] [--seed 9001] [--out RESULT.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import describe as describe_machine

from imface.corpus import synth
from imface.scan.align import FaceEvidence, align_scan
from imface.scan.load import load_scan
from imface.testing import non_faces

REAL = Path(__file__).resolve().parents[2] / "shared" / "real_scans"


def evidence(vertices, faces) -> dict:
    t0 = time.perf_counter()
    a = align_scan(vertices, faces, unit="mm", check=False)
    e = FaceEvidence(a.residual_mm, a.inlier_fraction, a.nose_fraction)
    return {
        "residual_mm": round(e.residual_mm, 2),
        "inlier_fraction": round(e.inlier_fraction, 3),
        "nose_fraction": round(e.nose_fraction, 3),
        "score": round(e.score, 3),
        "accepted": e.is_face,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python benchmarks/face_evidence.py")
    ap.add_argument("--identities", type=int, default=30, help="wide-population adults")
    ap.add_argument("--seed", type=int, default=9001)
    ap.add_argument("--real", default=str(REAL))
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    rows: dict[str, dict] = {"faces": {}, "non_faces": {}}
    for name, mesh in non_faces().items():
        rows["non_faces"][name] = evidence(mesh.vertices, mesh.faces)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = synth.Recipe(seed=args.seed, extra=0, only=("1_neutral",), population="wide")
        synth.write_corpus(Path(tmp), args.identities, recipe, progress=False)
        for path in sorted(Path(tmp).glob("*/1_neutral.ply")):
            scan = load_scan(path, "mm")
            rows["faces"][f"wide {path.parent.name}"] = evidence(scan.vertices, scan.faces)
    for path in sorted(Path(args.real).glob("*.ply")) if Path(args.real).is_dir() else []:
        scan = load_scan(path, "mm")
        rows["faces"][path.name] = evidence(scan.vertices, scan.faces)
    faces, others = rows["faces"].values(), rows["non_faces"].values()
    result = {
        "benchmark": "face_evidence",
        "machine": describe_machine(),
        "identities": args.identities,
        "seed": args.seed,
        "faces_accepted": f"{sum(r['accepted'] for r in faces)}/{len(faces)}",
        "non_faces_refused": f"{sum(not r['accepted'] for r in others)}/{len(others)}",
        "lowest_face_score": min(r["score"] for r in faces),
        "highest_non_face_score": max(r["score"] for r in others),
        "median_seconds": float(np.median([r["seconds"] for r in faces])),
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
