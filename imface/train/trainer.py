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
from imface.train.correspondence import Registrations
from imface.train.losses import AutoDecoder, cosine_ramp
from imface.train.rundir import MODEL_FILE, STATE_FILE, RunDir
from imface.units import REGION_RADIUS

__all__ = ["MODEL_FILE", "STATE_FILE", "Dist", "Trainer", "TrainingSet"]


# -- data ------------------------------------------------------------------------------------
@dataclass
class TrainingSet:
    """The training scans of a prepared corpus and their code bookkeeping."""

    corpus: object  # imface.samples.cache.Corpus
    keys: list[str]
    identity_names: list[str]
    identity_of_scan: np.ndarray  # (scans,) index into identity_names
    exp_index: np.ndarray  # (scans,) row of the expression code table, -1 for neutral scans
    expression_labels: list[str]  # per expression code
    neutral_landmarks: np.ndarray  # (identities, 5, 3) of each person's neutral scan
    registrations: Registrations | None = None  # correspondence supervision, where scans have it

    @classmethod
    def open(
        cls, cache: str | Path, test_identities: float, seed: int, train_keys: list[str] | None = None
    ) -> TrainingSet:
        """The training scans: `train_keys` exactly (a resumed run's stored split), or the split
        of `test_identities` held-out people."""
        from imface.samples.cache import Corpus

        corpus = Corpus.open(cache)
        records = {r["key"]: r for r in corpus.scans}
        if train_keys is None:
            keys, _ = corpus.split(test_identities, seed)
        else:
            gone = [k for k in train_keys if k not in records]
            if gone:
                raise UserError(
                    f"{cache}: {len(gone)} training scans of this run are no longer in the cache "
                    f"(e.g. {gone[0]}); resume with the cache it was trained on"
                )
            keys = list(train_keys)
        if not keys:
            raise UserError(f"{cache}: no training scans after holding out test identities")
        identity_names = sorted({records[k]["identity"] for k in keys})
        id_lookup = {name: i for i, name in enumerate(identity_names)}
        identity_of_scan = np.array([id_lookup[records[k]["identity"]] for k in keys])
        exp_index = np.full(len(keys), -1)
        labels = []
        for i, key in enumerate(keys):
            if not records[key]["neutral"]:
                exp_index[i] = len(labels)
                labels.append(records[key]["expression"])
        neutral = cls._neutral_landmarks(corpus, keys, records, identity_of_scan, len(identity_names))
        registrations = cls._registrations(corpus, keys, records, identity_of_scan)
        return cls(corpus, keys, identity_names, identity_of_scan, exp_index, labels, neutral, registrations)

    @staticmethod
    def _registrations(corpus, keys, records, identity_of_scan) -> Registrations | None:
        """Each training scan's registered mesh and its person's neutral one (model frame)."""
        of_scan = []
        for key in keys:
            reg = corpus.load(key).get("registered_vertices")
            of_scan.append(None if reg is None else np.asarray(reg, dtype=np.float32))
        neutral_of_person = {
            identity_of_scan[i]: of_scan[i] for i, key in enumerate(keys) if records[key]["neutral"]
        }
        neutral_of_scan = [neutral_of_person.get(identity_of_scan[i]) for i in range(len(keys))]
        return Registrations.from_scans(corpus.registered_faces, of_scan, neutral_of_scan)

    @staticmethod
    def _neutral_landmarks(corpus, keys, records, identity_of_scan, identities) -> np.ndarray:
        """Landmarks of each person's neutral scan (the mean of their scans if none is neutral)."""
        sums = np.zeros((identities, 5, 3))
        counts = np.zeros(identities)
        neutral_found = np.zeros(identities, dtype=bool)
        for key, ident in zip(keys, identity_of_scan, strict=True):
            lm = np.asarray(corpus.load(key)["landmarks5"], dtype=np.float64)
            if records[key]["neutral"]:
                sums[ident], counts[ident], neutral_found[ident] = lm, 1, True
            elif not neutral_found[ident]:
                sums[ident] += lm
                counts[ident] += 1
        return (sums / np.maximum(counts, 1)[:, None, None]).astype(np.float32)

    def batch(
        self,
        scans: np.ndarray,
        points_per_scan: int,
        generator: torch.Generator,
        device,
        correspondences: int = 0,
    ):
        """Load a batch: half surface points (with normals), half space points (with SDF), and
        `correspondences` registered points per scan where the scans carry registrations."""
        n_surface = points_per_scan // 2
        n_space = points_per_scan - n_surface
        fields: dict[str, list] = {k: [] for k in ("surface_points", "surface_normals", "space_points")}
        fields.update(space_sdf=[], landmarks5=[])
        for scan in scans:
            arrays = self.corpus.load(self.keys[scan])
            pick_s = _pick(arrays["surface_points"].shape[0], n_surface, generator)
            pick_u = _pick(arrays["space_points"].shape[0], n_space, generator)
            fields["surface_points"].append(arrays["surface_points"][pick_s])
            fields["surface_normals"].append(arrays["surface_normals"][pick_s])
            fields["space_points"].append(arrays["space_points"][pick_u])
            fields["space_sdf"].append(arrays["space_sdf"][pick_u])
            fields["landmarks5"].append(arrays["landmarks5"])
        batch = {k: torch.from_numpy(np.stack(v).astype(np.float32)).to(device) for k, v in fields.items()}
        identity = self.identity_of_scan[scans]
        batch["scan"] = torch.from_numpy(scans).long().to(device)
        batch["identity"] = torch.from_numpy(identity).long().to(device)
        batch["neutral_landmarks5"] = torch.from_numpy(self.neutral_landmarks[identity]).to(device)
        if self.registrations is not None and correspondences > 0:
            samples = self.registrations.sample(scans, correspondences, generator)
            batch.update({k: v.to(device) for k, v in samples.items()})
        return batch

    @property
    def held_out_identities(self) -> list[str]:
        return sorted(set(self.corpus.identities) - set(self.identity_names))

    def template_landmarks(self) -> torch.Tensor:
        """The fixed template landmarks l'': the mean neutral landmarks of the training people."""
        return torch.from_numpy(self.neutral_landmarks.mean(0)).float()


def _pick(available: int, wanted: int, generator: torch.Generator) -> np.ndarray:
    # sorted indices read memory-mapped arrays in order (much faster from disk)
    return np.sort(torch.randint(available, (wanted,), generator=generator).numpy())


def _batch_generator(seed: int, epoch: int, batch: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + batch) * 257 + rank)


def epoch_order(scans: int, seed: int, epoch: int) -> np.ndarray:
    """The same permutation of the scans on every process."""
    return torch.randperm(scans, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).numpy()


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
        gen = _batch_generator(cfg.seed, self.epoch, batch_in_epoch, env.rank)
        scans = self._scans_of_batch(batch_in_epoch)
        batch = self.data.batch(scans, cfg.points_per_scan, gen, env.device, cfg.correspondence_points)
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
