"""Training throughput: sampled points per second, one process and torchrun with K processes.

    python benchmarks/train.py --corpus CACHE [--steps 20] [--procs 2] [--preset default]

Runs the real CLI (`python -m imface train`) in subprocesses, side by side in one run, and reads
the per-step timings from each run's log.jsonl (the first steps are warm-up and skipped). Prints
one JSON line. On CPU each torchrun process gets cores / K threads, so the ratio shows what the
gloo all-reduce costs; on GPUs (NCCL) each process has its own device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from machine import describe as describe_machine


def _run(cmd: list[str], threads: int, out: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    timed = [r for r in records if r["step"] > 2] or records
    return sum(r["points_per_s"] for r in timed) / len(timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--preset", default="default")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    common = ["--corpus", args.corpus, "--preset", args.preset, "--max-steps", str(args.steps)]
    common += ["--checkpoint-every", str(10**9), "--device", args.device, "--log-every", "1"]
    result = {"benchmark": "train", "machine": describe_machine(), "device": args.device}
    with tempfile.TemporaryDirectory() as tmp:
        single = Path(tmp) / "single"
        cmd = [sys.executable, "-m", "imface", "train", "--out", str(single), *common]
        result["points_per_s_1proc"] = round(_run(cmd, cores, single))
        multi = Path(tmp) / "multi"
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={args.procs}",
        ]
        cmd = [*torchrun, "-m", "imface", "train", "--out", str(multi), *common]
        result[f"points_per_s_{args.procs}proc"] = round(_run(cmd, max(1, cores // args.procs), multi))
    result["scaling"] = round(result[f"points_per_s_{args.procs}proc"] / result["points_per_s_1proc"], 3)
    result["steps"] = args.steps
    print(json.dumps(result))


if __name__ == "__main__":
    main()
