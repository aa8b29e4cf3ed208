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


@dataclass
class CodeProblem:
    """One scan's codes to fit: its SDF samples in the model frame (surface_points, surface_normals,
    space_points, space_sdf, and optionally their hashes) and where the fit starts. A known
    identity (`fixed_identity`) holds z_id there and fits the rest."""

    samples: dict[str, torch.Tensor]
    init_id: torch.Tensor | None = None
    init_exp: torch.Tensor | None = None
    fixed_identity: torch.Tensor | None = None


def _initial_codes(
    model: ImFace, restarts: int, problem: CodeProblem, spread, generator
) -> list[torch.Tensor]:
    cfg = model.config
    init_id, init_exp = problem.init_id, problem.init_exp
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
    problem = CodeProblem(samples, init_id, init_exp, fixed_identity)
    job = fit_many_codes_job(model, [problem], config, spread=spread, weights=weights, prior_std=prior_std)
    try:
        while True:
            record = next(job)
            record.preview = record.preview[0]
            yield record
    except StopIteration as stop:
        return stop.value[0]
    finally:
        job.close()


def fit_many_codes_job(
    model: ImFace,
    problems: list[CodeProblem],
    config: FitConfig | None = None,
    *,
    spread: tuple[float, float] = (0.0, 0.0),
    weights: LossWeights | None = None,
    prior_std: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Job[list[CodeFit]]:
    """`fit_codes_job` for several scans at once: their restarts are rows of one batch through
    the network (4 scans take ~3 scans' time on a 2-core CPU), each row with its own scan's
    samples and loss, so every scan gets the fit it gets alone up to float rounding (8 held-out
    scans: Chamfer within 0.004 mm of their fits alone). Records carry the mean of
    the scans' best losses and, as `preview`, each scan's best codes."""
    cfg = config or FitConfig()
    w = weights or LossWeights()
    device = next(model.parameters()).device
    restarts, count = max(cfg.restarts, 1), len(problems)
    generators = [torch.Generator().manual_seed(cfg.seed) for _ in problems]  # as if alone
    starts = [
        _initial_codes(model, restarts, p, spread, g) for p, g in zip(problems, generators, strict=True)
    ]
    params = [torch.cat(parts).to(device).requires_grad_(True) for parts in zip(*starts, strict=True)]
    fixed_rows, fixed_values = _fixed_identities(problems, restarts, model.config.id_dim, device)
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    whiten = _whitening(prior_std, device)
    for p in model.parameters():
        p.requires_grad_(False)
    samples = [{k: v.to(device) for k, v in p.samples.items()} for p in problems]
    start, histories = time.perf_counter(), [[] for _ in problems]
    per_row = torch.zeros(count * restarts)

    def codes_in_use():
        z_id = torch.where(fixed_rows[:, None], fixed_values, params[0])
        return [z_id, *params[1:]]

    def best_codes():
        winners = per_row.detach().view(count, restarts).argmin(1)
        rows = torch.arange(count) * restarts + winners
        return [_best_codes(codes_in_use(), int(row)) for row in rows]

    try:
        for it in range(cfg.iterations):
            for group in optimizer.param_groups:  # cosine decay to 5 % of the initial rate
                group["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * it / cfg.iterations)))
            points = _points_for_iteration(cfg, it)
            batches = [_draw(s, points, g, device, it) for s, g in zip(samples, generators, strict=True)]
            per_row = _row_losses(model, codes_in_use(), batches, restarts, w, cfg, whiten)
            optimizer.zero_grad(set_to_none=True)
            per_row.sum().backward()
            optimizer.step()
            if prior_std is not None:
                _keep_in_range(params, prior_std, cfg.code_bound_std)
            best = per_row.detach().view(count, restarts).min(1).values
            for history, value in zip(histories, best.tolist(), strict=True):
                history.append(value)
            values = {"loss": float(best.mean())}
            yield Progress(FITTING, it + 1, cfg.iterations, values=values, preview=best_codes())
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    seconds = time.perf_counter() - start
    return [
        CodeFit(codes, history[-1] if history else float("nan"), cfg.iterations, seconds, history)
        for codes, history in zip(best_codes(), histories, strict=True)
    ]


def _fixed_identities(problems, restarts: int, id_dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows,) which rows hold a known identity, and (rows, id_dim) that identity (0 elsewhere)."""
    fixed, values = [], []
    for problem in problems:
        known = problem.fixed_identity
        fixed.append(torch.full((restarts,), known is not None))
        value = torch.zeros(id_dim) if known is None else known.detach().float().reshape(-1)
        values.append(value.repeat(restarts, 1))
    return torch.cat(fixed).to(device), torch.cat(values).to(device)


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


def _row_losses(
    model: ImFace, params, batches: list[dict], restarts: int, w: LossWeights, cfg: FitConfig, whiten=None
) -> torch.Tensor:
    """Eq. 17 per row (a restart of a scan; rows are scan-major, `restarts` a scan, each with its
    scan's batch): SDF L1, normal, eikonal and embedding terms; (rows,)."""
    device = params[0].device
    rows = [batch for batch in batches for _ in range(restarts)]
    sizes = [(len(b["surface_points"]), len(b["space_points"])) for b in rows]  # (surface, space)
    parts = [t for b in rows for t in (b["surface_points"], b["space_points"])]
    points = torch.cat(parts).detach().requires_grad_(True)
    index = torch.arange(len(rows), device=device).repeat_interleave(
        torch.tensor([s + u for s, u in sizes], device=device)
    )
    on_surface = torch.cat([torch.arange(s + u, device=device) < s for s, u in sizes])
    codes = Codes(params[0], params[1], None, params[2] if len(params) > 2 else None)
    out = model(points, index, codes, detail=len(params) > 2)
    grad = spatial_gradient(out.sdf, points, create_graph=True)
    target = torch.cat(
        [t for b in rows for t in (b["surface_points"].new_zeros(len(b["surface_points"])), b["space_sdf"])]
    )
    error = (out.sdf - target).abs()
    per_row = lambda values, mask: _row_mean(values, index[mask], len(rows))  # noqa: E731
    sdf_term = 0.5 * (per_row(error[on_surface], on_surface) + per_row(error[~on_surface], ~on_surface))
    normals = torch.cat([b["surface_normals"] for b in rows])
    cos = torch.nn.functional.cosine_similarity(grad[on_surface], normals, dim=-1)
    normal_term = per_row(1 - cos, on_surface)
    eikonal_term = _row_mean((grad.norm(dim=-1) - 1).abs(), index, len(rows))
    if whiten is None:
        embedding = cfg.embedding_weight * (params[0].pow(2).mean(1) + params[1].pow(2).mean(1))
    else:
        whitened = (params[0] * whiten[0]).pow(2).mean(1) + (params[1] * whiten[1]).pow(2).mean(1)
        embedding = cfg.whitened_prior_weight * whitened
    return w.sdf * sdf_term + w.normal * normal_term + w.eikonal * eikonal_term + embedding


def _row_mean(values: torch.Tensor, index: torch.Tensor, rows: int) -> torch.Tensor:
    """Mean of `values` per row of `index`; (rows,)."""
    sums = values.new_zeros(rows).index_add(0, index, values)
    counts = torch.bincount(index, minlength=rows).clamp(min=1)
    return sums / counts
