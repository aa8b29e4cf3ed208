"""Auto-decoder training (the command line, ``python -m imface train``, is imface/train/cli.py).

Several processes (GPUs or CPU) with torchrun: ``torchrun --nproc_per_node K -m imface train ...``
uses DistributedDataParallel (NCCL on CUDA, gloo on CPU).

RUN/ is laid out by ``imface.train.rundir``: config.json, split.json (the held-out split, reused on
--resume), log.jsonl (one JSON line per logged step), state.safetensors (everything needed to
resume exactly: weights, codes, optimizer moments, step; written atomically) and
model.safetensors (the inference checkpoint, `imface.io` format). Batches are drawn from a
generator seeded by (seed, epoch, batch, rank), so a resumed run sees exactly the batches the
uninterrupted run would have seen; the log is cut back to the resumed step, so no step is logged
twice.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from imface.baseline import corpus_region
from imface.config import TrainConfig
from imface.errors import UserError
from imface.io import TrainedCodes, save_checkpoint
from imface.jobs import Job, Progress, drive_with_tqdm
from imface.model.basis import ShapeBasis, basis_vertices
from imface.train.losses import AutoDecoder, cosine_ramp, random_faces
from imface.train.rundir import MODEL_FILE, STATE_FILE, RunDir
from imface.train.training_set import TrainingSet, batch_generator, epoch_order
from imface.units import REGION_RADIUS

__all__ = ["MODEL_FILE", "STATE_FILE", "Dist", "Trainer"]


# -- distributed -------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str | None) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if world <= 1:
        return Dist(device=torch.device(device_name or ("cuda" if use_cuda else "cpu")))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return Dist(rank=dist.get_rank(), world=world, device=device)


# -- state -----------------------------------------------------------------------------------
def save_state(path: Path, decoder: AutoDecoder, optimizer, step: int, epoch: int, cfg: TrainConfig) -> None:
    """Everything needed to resume exactly, as safetensors + JSON (never pickle), atomically."""
    from safetensors.torch import save_file

    tensors = {f"decoder.{k}": v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, slots in opt["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = {
        "step": str(step),
        "epoch": str(epoch),
        "param_groups": json.dumps(opt["param_groups"]),
        "train_config": json.dumps(cfg.to_dict()),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def load_state(path: Path, decoder: AutoDecoder, optimizer) -> tuple[int, int]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise UserError(f"{path}: cannot resume, training state is unreadable ({exc})") from None
    try:
        decoder.load_state_dict(
            {k[len("decoder.") :]: v for k, v in tensors.items() if k.startswith("decoder.")}
        )
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        return int(meta["step"]), int(meta["epoch"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{path}: cannot resume, the training state does not match this run ({first})"
        ) from None


def trained_codes(decoder: AutoDecoder, data: TrainingSet) -> TrainedCodes:
    expressive = [i for i in range(len(data.keys)) if data.exp_index[i] >= 0]
    return TrainedCodes(
        z_id=decoder.id_codes.detach().cpu(),
        z_exp=decoder.exp_codes.detach().cpu()[: len(expressive)],
        identity_labels=data.identity_names,
        expression_labels=data.expression_labels,
        expression_keys=[data.keys[i] for i in expressive],
        expression_identity=[int(data.identity_of_scan[i]) for i in expressive],
        z_detail=None if decoder.detail_codes is None else decoder.detail_codes.detach().cpu(),
        detail_keys=list(data.keys) if decoder.detail_codes is not None else [],
    )


def tie_codes(decoder: AutoDecoder, data: TrainingSet) -> ShapeBasis:
    """Fix the decoder's codes to the registrations' PCA coordinates (over the face region the
    scans show; imface/model/basis.py) and return the bases, which the checkpoint stores."""
    regs = data.registrations
    if regs is None or any(r is None or n is None for r, n in zip(regs.of_scan, regs.neutral, strict=True)):
        raise UserError(
            "code_space 'registrations' needs a registration of every training scan and of each "
            "person's neutral scan (synthetic corpora have them); use code_space 'learned'"
        )
    region = corpus_region(data.corpus, data.keys, regs.of_scan)
    pick = basis_vertices(region & (np.linalg.norm(regs.template, axis=1) < REGION_RADIUS))
    first_scan = {int(p): i for i, p in reversed(list(enumerate(data.identity_of_scan)))}
    neutral = np.stack([regs.neutral[first_scan[p]][pick] for p in range(len(data.identity_names))])
    expressive = np.flatnonzero(data.exp_index >= 0)
    expressive = expressive[np.argsort(data.exp_index[expressive])]  # rows of the code table
    moved = np.stack([regs.of_scan[i][pick] for i in expressive]) if len(expressive) else neutral[:0]
    still = np.stack([regs.neutral[i][pick] for i in expressive]) if len(expressive) else neutral[:0]
    cfg = decoder.model.config
    basis = ShapeBasis.build(neutral, moved, still, cfg.id_dim, cfg.exp_dim)
    with torch.no_grad():
        decoder.id_codes.copy_(basis.identity_codes(neutral))
        if len(expressive):
            decoder.exp_codes.copy_(basis.expression_codes(moved, still))
    decoder.id_codes.requires_grad_(False)
    decoder.exp_codes.requires_grad_(False)
    return basis


# -- the loop ----------------------------------------------------------------------------------
def learning_rate_scale(cfg: TrainConfig, epoch: int) -> float:
    if epoch < cfg.lr_decay_after:
        return 1.0
    return cfg.lr_decay ** ((epoch - cfg.lr_decay_after) // cfg.lr_decay_every + 1)


class Trainer:
    def __init__(
        self, cfg: TrainConfig, data: TrainingSet, run_dir: Path, env: Dist, log_every: int = 10, meta=None
    ):
        self.cfg, self.data, self.run_dir, self.env = cfg, data, Path(run_dir), env
        self.files = RunDir(run_dir)
        self.log_every = log_every
        self.meta = dict(meta or {})  # stored in every checkpoint (e.g. the held-out split)
        torch.manual_seed(cfg.seed)
        exp_index = torch.from_numpy(data.exp_index)
        self.decoder = AutoDecoder(
            cfg.model, len(data.identity_names), len(data.keys), exp_index, cfg.code_init_std
        )
        self.decoder.model.template_landmarks.copy_(data.template_landmarks())
        self.basis = tie_codes(self.decoder, data) if cfg.code_space == "registrations" else None
        if cfg.model.linear_backbone and self.basis is None:
            raise UserError('model.linear_backbone needs code_space "registrations"')
        self.decoder.model.attach_basis(self.basis)
        self.decoder.to(env.device)
        code_params = [p for p in (self.decoder.id_codes, self.decoder.exp_codes) if p.requires_grad]
        if self.decoder.detail_codes is not None:
            code_params.append(self.decoder.detail_codes)
        groups = [{"params": list(self.decoder.model.parameters()), "lr": cfg.lr, "base_lr": cfg.lr}]
        if code_params:
            groups.append({"params": code_params, "lr": cfg.code_lr, "base_lr": cfg.code_lr})
        self.optimizer = torch.optim.Adam(groups)
        self.module = self.decoder
        if env.world > 1:
            self.module = torch.nn.parallel.DistributedDataParallel(self.decoder, find_unused_parameters=True)
        self.step, self.epoch = 0, 0
        self.batches_per_epoch = max(1, math.ceil(len(data.keys) / (cfg.scans_per_batch * env.world)))

    def resume(self) -> bool:
        """Continue from the saved state; the log loses the steps after it (they are re-done)."""
        if not self.files.state.exists():
            return False
        self.step, self.epoch = load_state(self.files.state, self.decoder, self.optimizer)
        if self.env.main:
            self.files.trim_log(self.step)
        return True

    def start_from(self, path) -> None:
        """Weights, codes and step of a checkpoint trained on these scans or on a subset of them
        (a corpus grown with more people or scans): the codes it has are copied by label, the
        others start as a fresh run's. Every person it trained on must train here too, so a
        person held out now was never seen."""
        from imface.io import load_checkpoint

        ckpt = load_checkpoint(path)
        if ckpt.config.to_dict() != self.cfg.model.to_dict():
            raise UserError(f"{path}: its model config differs from this run's; cannot start from it")
        data = self.data
        people = {name: i for i, name in enumerate(data.identity_names)}
        expressive = {
            data.keys[i]: int(data.exp_index[i]) for i in range(len(data.keys)) if data.exp_index[i] >= 0
        }
        unseen = [n for n in ckpt.codes.identity_labels if n not in people]
        unseen += [k for k in ckpt.codes.expression_keys if k not in expressive]
        if unseen:
            raise UserError(
                f"{path}: trained on scans this run does not train on (e.g. {unseen[0]}); "
                "cannot start from it (a held-out person would have been seen)"
            )
        id_rows = torch.tensor([people[n] for n in ckpt.codes.identity_labels], dtype=torch.long)
        exp_rows = torch.tensor([expressive[k] for k in ckpt.codes.expression_keys], dtype=torch.long)
        with torch.no_grad():
            self.decoder.model.load_state_dict(ckpt.model.state_dict())
            if self.basis is None:  # tied codes come from this run's registrations, not the file
                self.decoder.id_codes[id_rows] = ckpt.codes.z_id.to(self.decoder.id_codes)
                if len(exp_rows):
                    self.decoder.exp_codes[exp_rows] = ckpt.codes.z_exp.to(self.decoder.exp_codes)
        self.step = int(ckpt.meta.get("step", 0))
        self.epoch = self.step // self.batches_per_epoch

    def _set_lr(self) -> None:
        scale = learning_rate_scale(self.cfg, self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * scale

    def _scans_of_batch(self, batch: int) -> np.ndarray:
        order = epoch_order(len(self.data.keys), self.cfg.seed, self.epoch)
        size = self.cfg.scans_per_batch
        chunk = order[batch * size * self.env.world : (batch + 1) * size * self.env.world]
        mine = chunk[self.env.rank :: self.env.world]
        return mine if mine.size else chunk[:1]

    def train_step(self, batch_in_epoch: int) -> dict[str, float]:
        cfg, env = self.cfg, self.env
        gen = batch_generator(cfg.seed, self.epoch, batch_in_epoch, env.rank)
        scans = self._scans_of_batch(batch_in_epoch)
        between = cfg.losses.correspondence_between > 0
        batch = self.data.batch(
            scans, cfg.points_per_scan, gen, env.device, cfg.correspondence_points, between
        )  # fmt: skip
        if cfg.losses.height_field > 0:
            codes = self.decoder.id_codes.shape[1], self.decoder.exp_codes.shape[0]
            faces = random_faces(gen, cfg.random_faces, cfg.random_face_points, *codes)
            batch.update({k: v.to(env.device) for k, v in faces.items()})
        epoch_float = self.epoch + batch_in_epoch / self.batches_per_epoch
        ramp = (
            cosine_ramp(epoch_float, cfg.detail_start_epoch, cfg.detail_ramp_epochs)
            if cfg.model.detail
            else 0.0
        )
        use_amp = cfg.amp and env.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            terms = self.module(batch, cfg.losses, ramp)
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    def run(self, max_steps: int | None = None, time_limit: float | None = None, progress=None) -> int:
        """Train to the end (or max_steps / time_limit seconds); `progress` gets each log record.
        Returns the step reached."""
        show_bar = self.env.main and sys.stderr.isatty()

        def logged(p: Progress) -> None:
            if progress is not None and p.preview is not None:
                progress(p.preview)

        return drive_with_tqdm(self.job(max_steps, time_limit), "train", not show_bar, logged)

    def job(self, max_steps: int | None = None, time_limit: float | None = None) -> Job[int]:
        """Training as a job: one Progress record per step (its log record, if logged, as the
        preview). Closing it checkpoints the step reached, so a cancelled run resumes there."""
        total_steps = self.cfg.epochs * self.batches_per_epoch
        if max_steps is not None:
            total_steps = min(total_steps, max_steps)
        start = time.perf_counter()
        try:
            while self.step < total_steps:
                batch_in_epoch = self.step - self.epoch * self.batches_per_epoch
                if batch_in_epoch >= self.batches_per_epoch:
                    self.epoch += 1
                    continue
                self._set_lr()
                t0 = time.perf_counter()
                terms = self.train_step(batch_in_epoch)
                self.step += 1
                record = self._after_step(terms, time.perf_counter() - t0)
                values = {"loss": terms["total"], "epoch": self.epoch}
                yield Progress("Training", self.step, total_steps, values=values, preview=record)
                if time_limit is not None and time.perf_counter() - start > time_limit:
                    break
        except GeneratorExit:
            self.checkpoint()
            raise
        if self.step % self.batches_per_epoch == 0:
            self.epoch = self.step // self.batches_per_epoch
        self.checkpoint()
        return self.step

    def _after_step(self, terms, seconds) -> dict | None:
        """Log every log_every steps (returns the record), checkpoint every checkpoint_every."""
        points = self.cfg.scans_per_batch * self.cfg.points_per_scan * self.env.world
        record = None
        if self.env.main and (self.step % self.log_every == 0 or self.step == 1):
            record = {"step": self.step, "epoch": self.epoch, "seconds": round(seconds, 4)}
            record["points_per_s"] = round(points / max(seconds, 1e-9))
            record.update({k: round(v, 6) for k, v in terms.items()})
            self.files.append_log(record)
            _tensorboard(self.files.tensorboard, record)
        if self.step % self.cfg.checkpoint_every == 0:
            self.checkpoint()
        return record

    def checkpoint(self) -> None:
        if not self.env.main:
            return
        save_state(self.files.state, self.decoder, self.optimizer, self.step, self.epoch, self.cfg)
        meta = {**self.meta, "step": self.step, "epoch": self.epoch, "seed": self.cfg.seed}
        codes = trained_codes(self.decoder, self.data)
        save_checkpoint(self.files.model, self.decoder.model, codes, meta, self.basis)


_WRITERS: dict[str, object] = {}


def _tensorboard(folder: Path, record: dict) -> None:
    """TensorBoard scalars when tensorboard is installed (optional dependency)."""
    key = str(folder)
    if key not in _WRITERS:
        try:
            from torch.utils.tensorboard import SummaryWriter

            _WRITERS[key] = SummaryWriter(str(folder))
        except ImportError:
            _WRITERS[key] = None
    writer = _WRITERS[key]
    if writer is None:
        return
    for name, value in record.items():
        if name not in ("step", "epoch"):
            writer.add_scalar(f"train/{name}", value, record["step"])
    writer.flush()
