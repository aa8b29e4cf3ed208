"""``python -m imface prepare SRC --out CACHE``: every scan of SRC aligned, cropped and sampled
into the cache by imface/samples/prepare.py, in parallel (``--workers``) with a progress bar. A run
in which any scan fails lists every failure and exits 1."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from imface.corpus.facescape import find_scans
from imface.samples.prepare import prepare


def add_arguments(parser) -> None:
    parser.add_argument("src", help="synthetic corpus, FaceScape TU folder, or folder of scans")
    parser.add_argument("--out", required=True, help="cache folder")
    parser.add_argument("--surface", type=int, default=250_000, help="surface points per scan (paper: 250k)")
    parser.add_argument(
        "--space", type=int, default=15_000, help="points in the unit sphere per scan (paper: 15k)"
    )
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="processes")
    parser.add_argument("--landmarks", help="FaceScape landmark_indices.npz (key v10)")
    parser.add_argument(
        "--unit",
        choices=("m", "cm", "mm"),
        help="unit of the scans (default: from the corpus, or guessed from each scan's size)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the SDF samples")
    parser.add_argument("--limit", type=int, help="prepare only the first N scans")


def run(args) -> int:
    problems: list[tuple[str, str]] = []
    kind, sources = find_scans(args.src, args.landmarks, problems)
    if args.limit:
        sources = sources[: args.limit]
    records, failed = prepare(
        sources, Path(args.out), args.surface, args.space, args.workers, args.seed, args.unit, kind
    )
    failed = problems + failed
    print(
        f"{len(records)} scans ready in {args.out} ({kind} source)"
        + (f"; {len(failed)} failed:" if failed else "")
    )
    for key, msg in failed:
        print(f"  {key}: {msg}", file=sys.stderr)
    return 0 if records and not failed else 1
