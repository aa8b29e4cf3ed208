"""Automatic alignment: seconds per scan and the error distribution on synthetic scans under
random rotations (<= 40 degrees), translations (+-30 cm) and units (m, cm, mm), unit not given.
One JSON line.

    python benchmarks/align.py [--identities 3] [--poses 2]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial.transform import Rotation

from imface.corpus.synth import Recipe, write_corpus
from imface.scan.align import align_scan

UNIT = {"m": 1e-3, "cm": 0.1, "mm": 1.0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--identities", type=int, default=3)
    ap.add_argument("--poses", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    names = ["1_neutral", "2_smile", "3_mouth_stretch", "12_lip_puckerer", "19_brow_raiser"]
    rows, times, failures = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        write_corpus(
            Path(tmp),
            args.identities,
            Recipe(seed=args.seed + 100, extra=0, only=tuple(names)),
            progress=False,
        )
        for ply in sorted(Path(tmp).glob("*/*.ply")):
            meta = json.loads(ply.with_suffix(".json").read_text())
            mesh = trimesh.load(ply, process=False)
            v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces)
            for _ in range(args.poses):
                axis = rng.normal(size=3)
                r = Rotation.from_rotvec(
                    np.radians(rng.uniform(0, 40)) * axis / np.linalg.norm(axis)
                ).as_matrix()
                unit = str(rng.choice(list(UNIT)))
                k, shift = UNIT[unit], rng.uniform(-300, 300, 3) * UNIT[unit]
                t0 = time.perf_counter()
                try:
                    al = align_scan(v @ r.T * k + shift, f)
                except Exception as exc:
                    failures.append(f"{ply.parent.name}/{ply.stem}: {exc}"[:200])
                    continue
                times.append(time.perf_counter() - t0)
                back = np.eye(4)
                back[:3, :3], back[:3, 3] = r.T / k, -r.T @ shift / k
                truth = np.asarray(meta["to_model"]) @ back
                s = np.cbrt(np.linalg.det(truth[:3, :3]))
                rot = Rotation.from_matrix(al.rotation @ (truth[:3, :3] / s).T).magnitude()
                nose = np.asarray(meta["nose_tip"]) @ r.T * k + shift
                err = al.to_model(nose) - (truth[:3, :3] @ nose + truth[:3, 3])
                rows.append((np.degrees(rot), np.linalg.norm(err) * 100, abs(al.scale / s - 1) * 100))
    rows = np.array(rows)
    pct = lambda c: {q: round(float(np.percentile(rows[:, c], q)), 3) for q in (50, 90, 100)}  # noqa
    print(
        json.dumps(
            {
                "benchmark": "align",
                "seconds_per_scan": round(float(np.mean(times)), 3),
                "scans": len(rows),
                "failures": len(failures),
                "failure_examples": failures[:3],
                "rotation_deg_pct": pct(0),
                "nose_mm_pct": pct(1),
                "scale_pct_pct": pct(2),
                "within_spec": int(((rows[:, 0] < 3) & (rows[:, 1] < 2) & (rows[:, 2] < 2)).sum()),
            }
        )
    )


if __name__ == "__main__":
    main()
