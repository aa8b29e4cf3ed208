"""Fitting the model to a scan (Eq. 17): freeze the network, optimise z_id and z_exp.

``fit_scan`` takes any scan, aligns it automatically, preprocesses it like the training data,
fits the codes, extracts the face and (detail stage) refines it onto the scan; the command line
is ``imface/fit/cli.py``.

What makes it fast compared with the official 1500 Adam steps at lr 1e-4: start from the mean
training code, a larger learning rate with cosine decay, few points early and more later
(coarse-to-fine), and several restarts optimised together as one batch (the best one wins).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from imface.config import FitConfig, LossWeights
from imface.errors import UserError
from imface.fit.refine import DetailMap, refine_to_scan
from imface.model import Codes, ImFace, spatial_gradient
from imface.units import MM_PER_UNIT

ProgressFn = Callable[[dict], None]


class FitCancelled(Exception):
    """Raised inside fitting when the caller's cancel flag is set."""


@dataclass
class CodeFit:
    codes: Codes  # the best restart, one face
    loss: float
    iterations: int
    seconds: float
    history: list[float] = field(default_factory=list)
    restarts: int = 1  # restarts run in all (a poor fit is retried with more)


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


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


def fit_codes(
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
    progress: ProgressFn | None = None,
    cancel=None,
) -> CodeFit:
    """Optimise codes so that the model's SDF matches SDF samples of one scan (model frame).

    samples: surface_points (Ns, 3), surface_normals (Ns, 3), space_points (Nu, 3), space_sdf (Nu,).
    `spread` is the std of the random offsets given to restarts 1..R-1 (e.g. the training codes' std).
    `prior_std` (per dimension, identity and expression) whitens the code prior: a dimension that
    varies less is held closer to 0 (codes tied to registrations); None: one std for all.
    `fixed_identity` holds z_id at a known code (the person's neutral fit) and fits the rest.
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
            if _is_cancelled(cancel):
                raise FitCancelled()
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
            if progress is not None:
                info = {"iteration": it + 1, "iterations": cfg.iterations, "loss": best}
                info["codes"] = _best_codes(params, int(torch.argmin(per_restart.detach())))
                progress(info)
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


# -- whole scans ---------------------------------------------------------------------------
# A fit is poor when the scan lies this far from it: the median over the scan's face region
# (real faces fit to 0.3-1.2 mm, CT stair steps included; a fit that lost the face is >= 4 mm)
POOR_MEDIAN_MM = 2.5
POOR_WITHIN_5MM = 0.7  # and at least this share of the scan within 5 mm of the fit


class FitFailed(UserError):
    """The fit ended far from the scan even after its restarts; `report` says how far."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


@dataclass
class FitResult:
    codes: Codes
    vertices: np.ndarray  # fitted mesh in the scan's own frame and units
    faces: np.ndarray
    alignment: object  # imface.scan.align.Alignment
    report: dict
    detail: DetailMap | None = None  # the detail stage's offsets in template space (any face takes them)


def fit_scan(
    checkpoint,
    scan,
    config: FitConfig | None = None,
    *,
    resolution: int = 128,
    alignment=None,
    preview_every: int = 0,
    progress: ProgressFn | None = None,
    cancel=None,
    unit: str | None = None,
    landmarks=None,
    on_poor_fit: str = "raise",
) -> FitResult:
    """Load (if a path), align, sample and fit one scan (mesh or point cloud); the mesh comes
    back in the scan frame.

    alignment: a known scan -> model transform instead of the automatic one. unit: the scan's
    unit ('m', 'cm', 'mm'; else guessed). landmarks: 5 or 7 points in the scan frame that start
    the alignment (`imface.scan.template.template_landmarks`). preview_every > 0 adds a coarse
    "mesh" (vertices in the scan frame, faces) to every n-th progress report. A fit that ends
    far from the scan is restarted; if it stays far, `on_poor_fit="raise"` raises FitFailed and
    "flag" returns it with report["ok"] False and report["warning"].
    """
    from imface.correspond import template_coordinates
    from imface.extract import face_mesh
    from imface.fit.samples import scan_samples
    from imface.scan.align import align_scan
    from imface.scan.load import load_scan, parse_unit

    cfg = config or FitConfig()
    started = time.perf_counter()
    unit = parse_unit(unit)
    if not hasattr(scan, "vertices"):
        scan = load_scan(scan, unit)
    where = getattr(scan, "path", "") or ""
    if alignment is None:
        alignment = align_scan(scan.vertices, scan.faces, unit=unit, path=where, landmarks=landmarks)
    aligned = time.perf_counter()
    samples = scan_samples(alignment.to_model(scan.vertices), scan.faces)
    sampled = time.perf_counter()
    fit, distances = _fit_with_restarts(checkpoint, samples, cfg, progress, preview_every, alignment, cancel)
    report = _report(fit, distances, alignment, started)
    report["align_seconds"] = round(aligned - started, 2)
    report["sample_seconds"] = round(sampled - aligned, 2)
    if not report["ok"]:
        report["warning"] = (
            f"{where + ': ' if where else ''}the fit stays far from the scan (median "
            f"{report['scan_to_fit_median_mm']:.1f} mm, {report['scan_within_5mm']:.0f}% within 5 mm; "
            f"need <= {POOR_MEDIAN_MM} mm and >= {100 * POOR_WITHIN_5MM:.0f}%) after "
            f"{report['restarts']} restarts: check the alignment, or give --landmarks"
        )
        if on_poor_fit == "raise":
            raise FitFailed(report["warning"], report)
    extracting = time.perf_counter()
    mesh = face_mesh(checkpoint.model, fit.codes, resolution)
    report["extract_seconds"] = round(time.perf_counter() - extracting, 2)
    vertices, detail_map = mesh.vertices, None
    if cfg.detail_stage:
        report["codes_only"] = surface_scores(mesh.vertices, mesh.faces, samples)
        refining = time.perf_counter()
        points, normals = (samples[k].cpu().numpy() for k in ("surface_points", "surface_normals"))
        detail = refine_to_scan(mesh.vertices, mesh.faces, points, normals)
        vertices = detail.apply(mesh.vertices)
        template = template_coordinates(checkpoint.model, fit.codes, mesh.vertices)
        detail_map = DetailMap(template, detail.offsets, Path(where).name if where else "")
        report.update(detail.summary(), detail_seconds=round(time.perf_counter() - refining, 2))
    report.update(surface_scores(vertices, mesh.faces, samples))
    report["seconds"] = round(time.perf_counter() - started, 2)
    return FitResult(fit.codes, alignment.to_scan(vertices), mesh.faces, alignment, report, detail_map)


def prior_std(checkpoint) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-dimension code std of a checkpoint whose codes are tied to registrations."""
    return None if checkpoint.basis is None else checkpoint.basis.code_std()


def starting_codes(checkpoint, surface_points, cfg: FitConfig) -> tuple[torch.Tensor | None, ...]:
    """Where the fit starts: the linear fit of the checkpoint's code bases to the scan when its
    codes are tied to registrations (imface/model/basis.py), else the mean training code
    (init "mean") or zeros."""
    if cfg.init != "mean":
        return None, None
    if checkpoint.basis is not None:
        points = surface_points.cpu().numpy() if torch.is_tensor(surface_points) else surface_points
        return checkpoint.basis.fit(np.asarray(points))
    stats = checkpoint.stats
    return stats["id"].mean, stats["exp"].mean


def _fit_with_restarts(checkpoint, samples, cfg, progress, preview_every, alignment, cancel):
    """The fit from its starting codes; if it ends far from the scan, once more with restarts
    spread by the training codes' std (optimised as one batch), keeping the closer one."""
    stats = checkpoint.stats
    spread = (float(stats["id"].std.mean()), float(stats["exp"].std.mean()))
    model = checkpoint.model
    init_id, init_exp = starting_codes(checkpoint, samples["surface_points"], cfg)

    def run(c: FitConfig):
        fit = fit_codes(
            model,
            samples,
            c,
            init_id=init_id,
            init_exp=init_exp,
            spread=spread,
            prior_std=prior_std(checkpoint),
            progress=_with_previews(progress, preview_every, model, alignment),
            cancel=cancel,
        )
        return fit, scan_to_fit_mm(model, fit.codes, samples)

    fit, distances = run(cfg)
    fit.restarts = cfg.restarts
    if _is_poor(distances) and cfg.restarts < RETRY_RESTARTS:
        retry = replace(cfg, restarts=RETRY_RESTARTS, iterations=int(cfg.iterations * 1.5), seed=cfg.seed + 1)
        fit2, distances2 = run(retry)
        fit2.restarts = cfg.restarts + RETRY_RESTARTS
        if np.median(distances2) < np.median(distances):
            return fit2, distances2
        fit.restarts = fit2.restarts
    return fit, distances


RETRY_RESTARTS = 6


def _is_poor(distances_mm) -> bool:
    return bool(np.median(distances_mm) > POOR_MEDIAN_MM or np.mean(distances_mm < 5.0) < POOR_WITHIN_5MM)


def scan_to_fit_mm(model: ImFace, codes: Codes, samples) -> np.ndarray:
    """Distance (mm) from each surface sample of the scan to the fitted surface: |SDF| (the
    fitted SDF is metric near its zero set), no mesh needed."""
    from imface.extract import face_sdf

    sdf = face_sdf(model, codes)
    pts = samples["surface_points"]
    out = [sdf(pts[i : i + 32768]).abs() for i in range(0, len(pts), 32768)]
    return torch.cat(out).cpu().numpy().astype(np.float64) * MM_PER_UNIT


def _report(fit, distances, alignment, started) -> dict:
    return {
        "ok": not _is_poor(distances),
        "seconds": round(time.perf_counter() - started, 2),
        "fit_seconds": round(fit.seconds, 2),
        "iterations": fit.iterations,
        "restarts": getattr(fit, "restarts", 1),
        "loss": fit.loss,
        "scan_to_fit_median_mm": float(np.median(distances)),
        "scan_to_fit_p90_mm": float(np.quantile(distances, 0.9)),
        "scan_within_5mm": float(100 * np.mean(distances < 5.0)),
        "alignment_transform": np.asarray(alignment.transform).tolist(),
        "alignment_residual_mm": float(getattr(alignment, "residual_mm", float("nan"))),
        "alignment_scale": float(getattr(alignment, "scale", float("nan"))),
        "unit": getattr(alignment, "unit", None),
    }


def surface_scores(vertices, faces, samples) -> dict:
    """Chamfer and F-scores against the scan in the model frame (mm), inside the protocol's
    region: the 100 mm sphere the scan was cropped to (the extraction cube's corners lie
    outside it). A real scan often covers less than that sphere (cut at the hairline, the
    cheeks), and the fitted surface beyond its edge has nothing to be compared with, so
    `"on_scan"` scores the fitted surface again inside the scan's footprint only: the
    points whose front view (x, y of the model frame) falls within 3 mm of the scan's own."""
    from imface.metrics import SurfaceSample, compare_samples, sample_in_region

    fitted = sample_in_region(vertices, faces, 50_000, np.zeros(3), 1.0)
    target = SurfaceSample(*(samples[k].cpu().numpy() for k in ("surface_points", "surface_normals")))
    scores = compare_samples(fitted, target)
    inside = cKDTree(target.points[:, :2]).query(fitted.points[:, :2])[0] < FOOTPRINT_MM / MM_PER_UNIT
    if inside.any():
        covered = SurfaceSample(fitted.points[inside], fitted.normals[inside])
        scores["on_scan"] = compare_samples(covered, target) | {"fitted_percent": float(100 * inside.mean())}
    return scores


FOOTPRINT_MM = 3.0


def _with_previews(progress, every: int, model: ImFace, alignment):
    """Wrap a progress callback so every n-th report carries a coarse mesh in the scan frame."""
    if progress is None or every <= 0:
        return progress

    def report(info: dict) -> None:
        if info["iteration"] % every == 0 or info["iteration"] == info["iterations"]:
            from imface.extract import face_mesh

            mesh = face_mesh(model, info["codes"], resolution=64)
            info = {**info, "mesh": (alignment.to_scan(mesh.vertices), mesh.faces)}
        progress(info)

    return report
