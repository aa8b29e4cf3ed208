"""``python -m imface train --corpus CACHE --out RUN [--resume | --init-from C]``: a run folder
(imface/train/rundir.py) trained by imface/train/trainer.py; with torchrun, several processes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from imface.config import ModelConfig, TrainConfig
from imface.errors import UserError
from imface.train.rundir import RunDir
from imface.train.trainer import Trainer, init_distributed
from imface.train.training_set import TrainingSet

PRESETS = {"default": ModelConfig, "paper": ModelConfig.paper, "tiny": ModelConfig.tiny}
DEFAULT_TEST_IDENTITIES = 0.2


def add_arguments(parser) -> None:
    parser.add_argument("--corpus", required=True, help="prepared cache (python -m imface prepare)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--config", help="TrainConfig JSON (see imface/config.py)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="model size")
    parser.add_argument("--detail", action="store_true", help="ImFace++ detail field")
    parser.add_argument(
        "--deformation",
        choices=["translation", "se3"],
        help="warp type of the deformation nets (config: translation)",
    )
    parser.add_argument("--epochs", type=int, help="passes over the training scans (config: 200)")
    parser.add_argument("--scans-per-batch", type=int, help="scans in one step (config: 8)")
    parser.add_argument("--points-per-scan", type=int, help="SDF samples per scan and step (config: 4096)")
    parser.add_argument("--lr", type=float, help="network learning rate (config: 1e-4)")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (config: 200)")
    parser.add_argument(
        "--test-identities",
        type=float,
        help=f"held out (count or fraction; default {DEFAULT_TEST_IDENTITIES}); --resume keeps the run's",
    )
    parser.add_argument(
        "--hold-out",
        help="comma-separated people to hold out (e.g. those a checkpoint given to --init-from "
        "held out), instead of --test-identities",
    )
    parser.add_argument("--max-steps", type=int, help="stop after this many steps")
    parser.add_argument("--time-limit", type=float, help="stop after this many seconds")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    parser.add_argument("--resume", action="store_true", help="continue RUN exactly where it stopped")
    parser.add_argument(
        "--init-from",
        help="start a new run from a checkpoint trained on these scans or a subset of them (its "
        "weights, codes and step; a fresh optimiser): continues the shipped model where its run "
        "folder is gone, or on a corpus grown with more people (with --hold-out its held-out people)",
    )


def build_config(args) -> TrainConfig:
    if args.config:
        try:
            cfg = TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"{args.config}: invalid training config ({exc})") from None
    else:
        cfg = TrainConfig(model=PRESETS[args.preset]())
    if args.detail:
        cfg.model.detail = True
    if args.deformation:
        cfg.model.deformation = args.deformation
    for name in ("epochs", "scans_per_batch", "points_per_scan", "lr", "checkpoint_every"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    return cfg


def run(args) -> int:
    files = RunDir(args.out)
    if args.resume:
        if not files.config.exists():
            raise UserError(f"{files.root}: nothing to resume (no {files.config.name})")
        cfg, split = files.read_config(), files.read_split()
    else:
        if files.holds_run():
            raise UserError(f"{files.root}: already holds a run; use --resume or another --out")
        cfg, split = build_config(args), None
        if args.hold_out:
            split = _split_holding_out(args.corpus, args.hold_out, args.test_identities)
    held_out = _held_out(args.test_identities, split)
    env = init_distributed(args.device)
    data = TrainingSet.open(args.corpus, held_out, cfg.seed, split["train_keys"] if split else None)
    if env.main:
        files.root.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            files.write_config(cfg)
        if not args.resume:
            files.write_split(held_out, data.keys, data.held_out_identities)
    # the corpus by folder name only: checkpoints get shared, machine paths should not travel with them
    meta = {"corpus": Path(args.corpus).name, "test_identities": held_out}
    trainer = Trainer(cfg, data, files.root, env, log_every=args.log_every, meta=meta)
    if args.resume:
        trainer.resume()
    elif args.init_from:
        trainer.start_from(args.init_from)
    try:
        steps = trainer.run(args.max_steps, args.time_limit)
    finally:
        if env.world > 1:
            dist.destroy_process_group()
    if env.main:
        print(json.dumps({"steps": steps, "epoch": trainer.epoch, "checkpoint": str(files.model)}))
    return 0


def _split_holding_out(cache, names: str, requested: float | None) -> dict:
    """The split that holds out exactly these people (comma-separated names)."""
    from imface.samples.cache import Corpus

    if requested is not None:
        raise UserError("--hold-out names the held-out people; leave out --test-identities")
    people = sorted({n.strip() for n in names.split(",") if n.strip()})
    train, _ = Corpus.open(cache).split_people(people)
    return {"requested": float(len(people)), "train_keys": train, "test_identities": people}


def _held_out(requested: float | None, split: dict | None) -> float:
    """The --test-identities value in force: a resumed run keeps the split stored with it."""
    if split is None:
        return DEFAULT_TEST_IDENTITIES if requested is None else requested
    stored = split.get("requested", DEFAULT_TEST_IDENTITIES)
    if requested is not None and requested != stored:
        print(
            f"note: --test-identities {requested:g} ignored; this run keeps its stored split "
            f"({len(split['test_identities'])} held-out identities, --test-identities {stored:g})",
            file=sys.stderr,
        )
    return stored


if __name__ == "__main__":  # torchrun -m imface.train.cli also works
    from imface.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
