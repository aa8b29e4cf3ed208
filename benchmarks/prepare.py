"""Preprocessing speed at the paper's sample counts (250k surface + 15k space): seconds per
scan, one process, including load, crop, hidden surfaces, sheet, sampling and writing. One JSON
line.

    python benchmarks/prepare.py [--scans 3] [--surface 250000] [--space 15000]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from imface.corpus.facescape import find_scans
from imface.corpus.synth import Recipe, write_corpus
from imface.samples.prepare import prepare_scan


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scans", type=int, default=3)
    ap.add_argument("--surface", type=int, default=250_000)
    ap.add_argument("--space", type=int, default=15_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "synth"
        names = ["1_neutral", "2_smile", "3_mouth_stretch", "16_grin", "19_brow_raiser"]
        write_corpus(src, 1, Recipe(seed=0, extra=0, only=tuple(names[: args.scans])), progress=False)
        _, scans = find_scans(src)
        times = []
        for s in scans[: args.scans]:
            t0 = time.perf_counter()
            prepare_scan(s, Path(tmp) / "cache", args.surface, args.space)
            times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "benchmark": "prepare",
                "seconds_per_scan": round(sum(times) / len(times), 3),
                "scans": len(times),
                "surface": args.surface,
                "space": args.space,
            }
        )
    )


if __name__ == "__main__":
    main()
