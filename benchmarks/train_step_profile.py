"""Where one training step's time goes, term by term (CPU), on a prepared cache.

Each loss family is switched off in turn and the step re-timed on the same batch; the difference
is that family's cost (forward + backward). Prints JSON.

    python benchmarks/train_step_profile.py --corpus CACHE [--points-per-scan 1024]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from machine import describe as describe_machine

from imface.config import ModelConfig, TrainConfig
from imface.train import losses
from imface.train.trainer import Dist, Trainer
from imface.train.training_set import TrainingSet, batch_generator


def time_steps(trainer: Trainer, batch, repeats: int) -> float:
    def step():
        terms = trainer.module(batch, trainer.cfg.losses, 0.0)
        trainer.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--points-per-scan", type=int, default=1024)
    parser.add_argument("--scans-per-batch", type=int, default=8)
    parser.add_argument("--correspondence-points", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = TrainConfig(
        model=ModelConfig(),
        scans_per_batch=args.scans_per_batch,
        points_per_scan=args.points_per_scan,
        correspondence_points=args.correspondence_points,
    )
    data = TrainingSet.open(args.corpus, test_identities=0.2, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, data, Path(tmp), Dist())
        scans = trainer._scans_of_batch(0)
        batch = data.batch(
            scans, cfg.points_per_scan, batch_generator(0, 0, 0, 0), "cpu", cfg.correspondence_points
        )
        full = time_steps(trainer, batch, args.repeats)
        costs = {}
        # loss family -> (function in imface.train.losses, a stand-in that contributes nothing)
        families = {
            "eikonal_canonical": ("_canonical_eikonal", lambda *a, **k: torch.zeros(())),
            "landmarks": ("_landmark_terms", lambda *a, **k: {}),
            "correspondence": ("correspondence_terms", lambda *a, **k: {}),
        }
        for family, (name, stand_in) in families.items():
            original = getattr(losses, name)
            setattr(losses, name, stand_in)
            try:
                costs[family] = full - time_steps(trainer, batch, args.repeats)
            finally:
                setattr(losses, name, original)
    points = cfg.scans_per_batch * cfg.points_per_scan
    report = {
        "benchmark": "train_step_profile",
        "machine": describe_machine(),
        "scans_per_batch": cfg.scans_per_batch,
        "points_per_scan": cfg.points_per_scan,
        "correspondence_points": cfg.correspondence_points,
        "step_s": round(full, 3),
        "sampled_points_per_s": round(points / full),
        "share": {k: round(v / full, 3) for k, v in costs.items()},
        "share_sdf_normal_eikonal_rest": round(1 - sum(costs.values()) / full, 3),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
