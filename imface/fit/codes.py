"""Fitting codes to SDF samples of a scan (Eq. 17): freeze the network, optimise z_id and z_exp.

Whole scans (alignment, samples, codes, extraction, detail) are ``imface/fit/scan.py``; the
command line is ``imface/fit/cli.py``.

What makes it fast compared with the official 1500 Adam steps at lr 1e-4: start from the mean
training code, a larger learning rate with cosine decay, few points early and more later
(coarse-to-fine), and several restarts optimised together as one batch (the best one wins).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from imface.config import FitConfig, LossWeights
from imface.jobs import Job, Progress, drive
from imface.model import Codes, ImFace, spatial_gradient

FITTING = "Fitting"  # the stage of the per-iteration records


@dataclass
class CodeFit:
    codes: Codes  # the best restart, one face
    loss: float
    iterations: int
    seconds: float
    history: list[float] = field(default_factory=list)
    restarts: int = 1  # restarts run in all (a poor fit is retried with more)


def _initial_codes(model: ImFace, restarts: int, init_id, init_exp, spread, generator) -> list[torch.Tensor]:
    cfg = model.config
    z_id = torch.zeros(cfg.id_dim) if init_id is None else init_id.detach().float().clone()
    z_exp = torch.zeros(cfg.exp_dim) if init_exp is None else init_exp.detach().float().clone()
    z_id, z_exp = z_id.repeat(restarts, 1), z_exp.repeat(restarts, 1)
    if restarts > 1:  # restart 0 starts exactly at the initial code
        z_id[1:] += torch.randn(restarts - 1, cfg.id_dim, generator=generator) * spread[0]
        z_exp[1:] += torch.randn(restarts - 1, cfg.exp_dim, generator=generator) * spread[1]
    out = [z_id, z_exp]
    if cfg.detail:
        out.append(torch.zeros(restarts, cfg.detail_dim))
    return out


def fit_codes(model: ImFace, samples, config: FitConfig | None = None, *, progress=None, **options):
    """`fit_codes_job` run to its end; `progress` sees each iteration's record."""
    return drive(fit_codes_job(model, samples, config, **options), progress)


def fit_codes_job(
    model: ImFace,
    samples: dict[str, torch.Tensor],
    config: FitConfig | None = None,
    *,
    init_id: torch.Tensor | None = None,
    init_exp: torch.Tensor | None = None,
    spread: tuple[float, float] = (0.0, 0.0),
    weights: LossWeights | None = None,
    prior_std: tuple[torch.Tensor, torch.Tensor] | None = None,
    fixed_identity: torch.Tensor | None = None,
) -> Job[CodeFit]:
    """Optimise codes so that the model's SDF matches SDF samples of one scan (model frame).

    samples: surface_points (Ns, 3), surface_normals (Ns, 3), space_points (Nu, 3), space_sdf (Nu,).
    `spread` is the std of the random offsets given to restarts 1..R-1 (e.g. the training codes' std).
    `prior_std` (per dimension, identity and expression) whitens the code prior: a dimension that
    varies less is held closer to 0 (codes tied to registrations); None: one std for all.
    `fixed_identity` holds z_id at a known code (the person's neutral fit) and fits the rest.
    Yields one record an iteration (loss in `values`, the best restart's codes as `preview`);
    closing the job stops it and leaves the network trainable again.
    """
    cfg = config or FitConfig()
    w = weights or LossWeights()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(cfg.seed)
    restarts = max(cfg.restarts, 1)
    params = [
        p.to(device).requires_grad_(True)
        for p in _initial_codes(model, restarts, init_id, init_exp, spread, generator)
    ]
    if fixed_identity is not None:
        params[0] = fixed_identity.detach().float().reshape(1, -1).repeat(restarts, 1).to(device)
    optimizer = torch.optim.Adam([p for p in params if p.requires_grad], lr=cfg.lr)
    whiten = _whitening(prior_std, device)
    for p in model.parameters():
        p.requires_grad_(False)
    samples = {k: v.to(device) for k, v in samples.items()}
    start, history = time.perf_counter(), []
    per_restart = torch.zeros(restarts)
    try:
        for it in range(cfg.iterations):
            for group in optimizer.param_groups:  # cosine decay to 5 % of the initial rate
                group["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * it / cfg.iterations)))
            points = _points_for_iteration(cfg, it)
            batch = _draw(samples, points, generator, device, it)
            per_restart = _restart_losses(model, params, batch, w, cfg, restarts, whiten)
            optimizer.zero_grad(set_to_none=True)
            per_restart.sum().backward()
            optimizer.step()
            if prior_std is not None:
                _keep_in_range(params, prior_std, cfg.code_bound_std)
            best = float(per_restart.detach().min())
            history.append(best)
            codes = _best_codes(params, int(torch.argmin(per_restart.detach())))
            yield Progress(FITTING, it + 1, cfg.iterations, values={"loss": best}, preview=codes)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    codes = _best_codes(params, int(torch.argmin(per_restart.detach())))
    return CodeFit(
        codes, history[-1] if history else float("nan"), cfg.iterations, time.perf_counter() - start, history
    )


def _best_codes(params, winner: int) -> Codes:
    return Codes(
        params[0][winner].detach().clone(),
        params[1][winner].detach().clone(),
        torch.tensor([False], device=params[0].device),
        params[2][winner].detach().clone() if len(params) > 2 else None,
    )


def _points_for_iteration(cfg: FitConfig, it: int) -> int:
    """Coarse-to-fine: a quarter of the points for the first third, all of them at the end."""
    fraction = min(1.0, 0.25 + 0.75 * it / max(cfg.iterations * 2 / 3, 1))
    return max(256, int(cfg.points_per_step * fraction))


def _draw(samples, count: int, generator, device, iteration: int = 0) -> dict[str, torch.Tensor]:
    """`count` samples, half on the surface: fixed by the samples' hashes when they have them
    (the same batches whatever the scan's pose), else drawn at random."""
    half = count // 2
    if "surface_hash" in samples:
        from imface.fit.samples import batch_mask

        n_s, n_u = len(samples["surface_hash"]), len(samples["space_hash"])
        pick_s = batch_mask(samples["surface_hash"], iteration, half / n_s)
        pick_u = batch_mask(samples["space_hash"], iteration, (count - half) / n_u)
    else:
        n_s, n_u = samples["surface_points"].shape[0], samples["space_points"].shape[0]
        pick_s = torch.randint(n_s, (half,), generator=generator).to(device)
        pick_u = torch.randint(n_u, (count - half,), generator=generator).to(device)
    return {
        "surface_points": samples["surface_points"][pick_s],
        "surface_normals": samples["surface_normals"][pick_s],
        "space_points": samples["space_points"][pick_u],
        "space_sdf": samples["space_sdf"][pick_u],
    }


@torch.no_grad()
def _keep_in_range(params, prior_std, bound: float) -> None:
    """Hold every code dimension within +-bound of its std: the network never saw codes
    beyond the data's range, and its surface there is an extrapolation (bubbles behind the face)."""
    for p, std in zip(params[:2], prior_std, strict=True):
        limit = bound * std.to(p.device)
        p.copy_(torch.maximum(torch.minimum(p, limit), -limit))


def _whitening(prior_std, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Factors that make the leading dimension's prior the plain one and whiten the others
    (a dimension the training data never moved is held at its start by a stiff prior)."""
    if prior_std is None:
        return None
    return tuple((s.max() / s.clamp(min=1e-3 * float(s.max()))).to(device) for s in prior_std)


def _restart_losses(
    model: ImFace, params, batch, w: LossWeights, cfg: FitConfig, restarts: int, whiten=None
) -> torch.Tensor:
    """Eq. 17 per restart: SDF L1, normal, eikonal and embedding terms; (R,)."""
    surface, space = batch["surface_points"], batch["space_points"]
    n_s = surface.shape[0]
    points = torch.cat([surface, space]).repeat(restarts, 1).detach().requires_grad_(True)
    per = n_s + space.shape[0]
    index = torch.arange(restarts, device=points.device).repeat_interleave(per)
    codes = Codes(params[0], params[1], None, params[2] if len(params) > 2 else None)
    out = model(points, index, codes, detail=len(params) > 2)
    sdf = out.sdf.view(restarts, per)
    grad = spatial_gradient(out.sdf, points, create_graph=True).view(restarts, per, 3)
    sdf_term = 0.5 * (sdf[:, :n_s].abs().mean(1) + (sdf[:, n_s:] - batch["space_sdf"]).abs().mean(1))
    cos = torch.nn.functional.cosine_similarity(grad[:, :n_s], batch["surface_normals"][None], dim=-1)
    normal_term = (1 - cos).mean(1)
    eikonal_term = (grad.norm(dim=-1) - 1).abs().mean(1)
    if whiten is None:
        embedding = cfg.embedding_weight * (params[0].pow(2).mean(1) + params[1].pow(2).mean(1))
    else:
        whitened = (params[0] * whiten[0]).pow(2).mean(1) + (params[1] * whiten[1]).pow(2).mean(1)
        embedding = cfg.whitened_prior_weight * whitened
    return w.sdf * sdf_term + w.normal * normal_term + w.eikonal * eikonal_term + embedding
