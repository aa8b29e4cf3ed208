"""Fitting the model to a whole scan, as a job: align it (any pose and unit), sample it like the
training data, fit the codes (``imface/fit/codes.py``; restarted when the fit ends far from the
scan), extract the face and move it onto the scan where the scan has data (the detail stage,
``imface/fit/refine.py``). The mesh comes back in the scan's own frame and unit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from imface.config import FitConfig
from imface.errors import MeshError, UserError
from imface.fit.codes import FITTING, CodeProblem, fit_codes_job, fit_many_codes_job
from imface.fit.refine import DetailMap, refine_to_scan
from imface.jobs import Job, Progress, drive
from imface.model import Codes, ImFace
from imface.units import MM_PER_UNIT

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


def fit_scan(checkpoint, scan, config: FitConfig | None = None, *, progress=None, **options) -> FitResult:
    """`fit_scan_job` run to its end; `progress` sees every record."""
    return drive(fit_scan_job(checkpoint, scan, config, **options), progress)


def fit_scan_job(
    checkpoint,
    scan,
    config: FitConfig | None = None,
    *,
    resolution: int = 128,
    alignment=None,
    preview_every: int = 0,
    unit: str | None = None,
    landmarks=None,
    on_poor_fit: str = "raise",
) -> Job[FitResult]:
    """Load (if a path), align, sample and fit one scan (mesh or point cloud); the mesh comes
    back in the scan frame.

    alignment: a known scan -> model transform instead of the automatic one. unit: the scan's
    unit ('m', 'cm', 'mm'; else guessed). landmarks: 5 or 7 points in the scan frame that start
    the alignment (`imface.scan.template.template_landmarks`). "Fitting" records carry the loss;
    preview_every > 0 gives every n-th of them a coarse mesh (scan frame) as `preview`. A fit that ends
    far from the scan is restarted; if it stays far, `on_poor_fit="raise"` raises FitFailed and
    "flag" returns it with report["ok"] False and report["warning"].
    """
    cfg = config or FitConfig()
    prepared = yield from _prepare_scan(scan, unit, landmarks, alignment)
    started = time.perf_counter()
    fit, distances = yield from _fit_with_restarts(
        checkpoint, prepared.samples, cfg, preview_every, prepared.alignment
    )
    codes_seconds = time.perf_counter() - started
    return (
        yield from _finish_fit(
            checkpoint, prepared, fit, distances, codes_seconds, cfg, resolution, on_poor_fit
        )
    )


def fit_scans_job(
    checkpoint,
    scans: list,
    config: FitConfig | None = None,
    *,
    resolution: int = 128,
    unit: str | None = None,
    on_poor_fit: str = "raise",
) -> Job[list]:
    """`fit_scan_job` for several scans whose codes are fitted as one batch through the network
    (`fit_many_codes_job`: each scan gets the fit it gets alone up to float rounding; the codes
    stage of 4 scans takes ~3 scans' time on a 2-core CPU). Returns one FitResult, or the
    UserError that stopped it (not a face, unreadable, a poor fit), per scan, in order; a
    report's `fit_seconds` is the scan's share of the batch."""
    cfg = config or FitConfig()
    outcomes: list = []
    for scan in scans:
        try:
            outcomes.append((yield from _prepare_scan(scan, unit)))
        except UserError as exc:
            outcomes.append(exc)
    prepared = [p for p in outcomes if isinstance(p, _PreparedScan)]
    if not prepared:
        return outcomes
    started = time.perf_counter()
    problems = [
        CodeProblem(p.samples, *starting_codes(checkpoint, p.samples["surface_points"], cfg))
        for p in prepared
    ]
    fits = yield from fit_many_codes_job(checkpoint.model, problems, cfg, **_code_fit_options(checkpoint))
    share = (time.perf_counter() - started) / len(prepared)
    finished = []
    for p, problem, fit in zip(prepared, problems, fits, strict=True):
        started = time.perf_counter()
        fit.restarts, fit.seconds = cfg.restarts, share
        distances = scan_to_fit_mm(checkpoint.model, fit.codes, p.samples)
        fit, distances = yield from _retry_if_poor(checkpoint, problem, cfg, fit, distances, 0, p.alignment)
        seconds = share + time.perf_counter() - started
        try:
            finished.append(
                (yield from _finish_fit(checkpoint, p, fit, distances, seconds, cfg, resolution, on_poor_fit))
            )
        except UserError as exc:
            finished.append(exc)
    done = iter(finished)  # in the order of the prepared scans
    return [next(done) if isinstance(p, _PreparedScan) else p for p in outcomes]


@dataclass
class _PreparedScan:
    """A scan aligned to the model frame and sampled like the training data."""

    alignment: object
    surface: object  # the scan's front-visible surface (imface.fit.samples.visible_surface)
    samples: dict
    where: str  # the scan's path, for messages
    align_seconds: float
    sample_seconds: float


def _prepare_scan(scan, unit=None, landmarks=None, alignment=None) -> Job[_PreparedScan]:
    from imface.fit.samples import surface_samples, visible_surface
    from imface.scan.align import align_scan
    from imface.scan.load import load_scan, parse_unit

    started = time.perf_counter()
    unit = parse_unit(unit)
    if not hasattr(scan, "vertices"):
        scan = load_scan(scan, unit)
    where = getattr(scan, "path", "") or ""
    if alignment is None:
        yield Progress("Aligning scan", 0, None, Path(where).name)
        alignment = align_scan(scan.vertices, scan.faces, unit=unit, path=where, landmarks=landmarks)
    aligned = time.perf_counter()
    yield Progress("Sampling scan", 0, None, f"{len(scan.vertices)} points")
    surface = visible_surface(alignment.to_model(scan.vertices), scan.faces)
    samples = surface_samples(surface)
    sampled = time.perf_counter()
    return _PreparedScan(alignment, surface, samples, where, aligned - started, sampled - aligned)


def _finish_fit(
    checkpoint,
    prepared: _PreparedScan,
    fit,
    distances,
    codes_seconds: float,
    cfg: FitConfig,
    resolution: int,
    on_poor_fit: str,
) -> Job[FitResult]:
    """The report (raising FitFailed for a poor fit unless it is flagged), the extracted face and
    the detail stage."""
    from imface.correspond import template_coordinates
    from imface.extract import face_mesh
    from imface.fit.samples import surface_truth

    started = time.perf_counter()
    where, samples = prepared.where, prepared.samples
    report = _report(fit, distances, prepared.alignment)
    report["align_seconds"] = round(prepared.align_seconds, 2)
    report["sample_seconds"] = round(prepared.sample_seconds, 2)
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
    yield Progress("Extracting the face", 0, None, f"{resolution}^3")
    mesh = face_mesh(checkpoint.model, fit.codes, resolution)
    report["extract_seconds"] = round(time.perf_counter() - extracting, 2)
    vertices, detail_map = mesh.vertices, None
    scoring = time.perf_counter()
    truth = surface_truth(prepared.surface)
    score_seconds = time.perf_counter() - scoring
    if cfg.detail_stage:
        scoring = time.perf_counter()
        report["codes_only"] = surface_scores(mesh.vertices, mesh.faces, truth)
        score_seconds += time.perf_counter() - scoring
        refining = time.perf_counter()
        yield Progress("Fitting the detail", 0, None, f"{len(mesh.vertices)} vertices")
        points, normals = (samples[k].cpu().numpy() for k in ("surface_points", "surface_normals"))
        detail = refine_to_scan(mesh.vertices, mesh.faces, points, normals)
        vertices = detail.apply(mesh.vertices)
        template = template_coordinates(checkpoint.model, fit.codes, mesh.vertices)
        detail_map = DetailMap(template, detail.offsets, Path(where).name if where else "")
        report.update(detail.summary(), detail_seconds=round(time.perf_counter() - refining, 2))
    scoring = time.perf_counter()
    report.update(surface_scores(vertices, mesh.faces, truth))
    score_seconds += time.perf_counter() - scoring
    # the fit's own time; scoring the report (150 k points a surface, twice) comes on top
    finish_seconds = time.perf_counter() - started - score_seconds
    own = prepared.align_seconds + prepared.sample_seconds + codes_seconds + finish_seconds
    report["seconds"] = round(own, 2)
    report["score_seconds"] = round(score_seconds, 2)
    to_scan = prepared.alignment.to_scan(vertices)
    return FitResult(fit.codes, to_scan, mesh.faces, prepared.alignment, report, detail_map)


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


def _code_fit_options(checkpoint) -> dict:
    """Restart spread (the training codes' std) and code prior of a checkpoint's fits."""
    stats = checkpoint.stats
    return {
        "spread": (float(stats["id"].std.mean()), float(stats["exp"].std.mean())),
        "prior_std": prior_std(checkpoint),
    }


def _fit_with_restarts(checkpoint, samples, cfg, preview_every, alignment):
    """The fit from its starting codes; if it ends far from the scan, once more with restarts
    spread by the training codes' std (optimised as one batch), keeping the closer one."""
    problem = CodeProblem(samples, *starting_codes(checkpoint, samples["surface_points"], cfg))
    fit = yield from _fit_problem(checkpoint, problem, cfg, preview_every, alignment)
    fit.restarts = cfg.restarts
    distances = scan_to_fit_mm(checkpoint.model, fit.codes, samples)
    return (yield from _retry_if_poor(checkpoint, problem, cfg, fit, distances, preview_every, alignment))


def _fit_problem(checkpoint, problem: CodeProblem, cfg: FitConfig, preview_every: int, alignment):
    job = fit_codes_job(
        checkpoint.model, problem.samples, cfg, init_id=problem.init_id, init_exp=problem.init_exp,
        **_code_fit_options(checkpoint),
    )  # fmt: skip
    return (yield from _with_previews(job, preview_every, checkpoint.model, alignment))


def _retry_if_poor(
    checkpoint, problem: CodeProblem, cfg: FitConfig, fit, distances, preview_every, alignment
):
    """A fit that ended far from the scan, once more with RETRY_RESTARTS restarts; the closer wins."""
    if not _is_poor(distances) or cfg.restarts >= RETRY_RESTARTS:
        return fit, distances
    retry = replace(cfg, restarts=RETRY_RESTARTS, iterations=int(cfg.iterations * 1.5), seed=cfg.seed + 1)
    fit2 = yield from _fit_problem(checkpoint, problem, retry, preview_every, alignment)
    distances2 = scan_to_fit_mm(checkpoint.model, fit2.codes, problem.samples)
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


def _report(fit, distances, alignment) -> dict:
    return {
        "ok": not _is_poor(distances),
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


def surface_scores(vertices, faces, target) -> dict:
    """Chamfer and F-scores against the scan (`target`: `scan_truth`'s protocol-density sample
    of its front-visible surface) in the model frame (mm), inside the protocol's region: the
    100 mm sphere the scan was cropped to (the extraction cube's corners lie outside it). A real
    scan often covers less than that sphere (cut at the hairline, the cheeks), and the fitted
    surface beyond its edge has nothing to be compared with, so `"on_scan"` scores the fitted
    surface again as the scan was taken: its front-visible part (the same hidden-surface removal
    as the scan's; no under-chin or nostril walls a front scan cannot show) whose front view
    (x, y of the model frame) falls within 3 mm of the scan's own."""
    from imface.metrics import PROTOCOL_POINTS, SurfaceSample, compare_samples, sample_in_region
    from imface.samples.preprocess import _submesh, visible_faces

    fitted = sample_in_region(vertices, faces, PROTOCOL_POINTS, np.zeros(3), 1.0)
    scores = compare_samples(fitted, target)
    try:
        shown = _submesh(np.asarray(vertices, np.float64), np.asarray(faces)[visible_faces(vertices, faces)])
    except MeshError:
        return scores
    front = sample_in_region(*shown, PROTOCOL_POINTS, np.zeros(3), 1.0)
    inside = cKDTree(target.points[:, :2]).query(front.points[:, :2])[0] < FOOTPRINT_MM / MM_PER_UNIT
    if inside.any():
        covered = SurfaceSample(front.points[inside], front.normals[inside])
        scores["on_scan"] = compare_samples(covered, target) | {"fitted_percent": float(100 * inside.mean())}
    return scores


FOOTPRINT_MM = 3.0


def _with_previews(job: Job, every: int, model: ImFace, alignment) -> Job:
    """The code fit's records with a coarse mesh (scan frame) as the preview of every n-th one
    (and of the last) instead of the codes."""
    from imface.extract import Mesh, face_mesh

    try:
        while True:
            record = next(job)
            codes, record.preview = record.preview, None
            due = record.done % every == 0 or record.done == record.total if every > 0 else False
            if due and record.stage == FITTING:
                mesh = face_mesh(model, codes, resolution=64)
                record.preview = Mesh(alignment.to_scan(mesh.vertices), mesh.faces)
            yield record
    except StopIteration as stop:
        return stop.value
    finally:
        job.close()
