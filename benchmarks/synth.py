"""Synthetic corpus speed: seconds per scan (Anny + subdivision + detail + PLY). One JSON line.

python benchmarks/synth.py [--scans 6]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from imface.corpus.anny_head import load_expressions
from imface.corpus.synth import Recipe, _generator, write_corpus


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scans", type=int, default=6)
    args = ap.parse_args()
    t0 = time.perf_counter()
    _generator(2)  # build Anny once (cached assets make this ~1-30 s)
    build = time.perf_counter() - t0
    names = list(load_expressions())[: args.scans]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        keys = write_corpus(Path(tmp), 1, Recipe(seed=0, extra=0, only=tuple(names)), progress=False)
        dt = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "benchmark": "synth",
                "seconds_per_scan": round(dt / len(keys), 3),
                "scans": len(keys),
                "model_build_s": round(build, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
