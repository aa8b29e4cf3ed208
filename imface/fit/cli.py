"""``python -m imface fit SCAN --out FITTED.ply [--report R.json] [--codes C.json]``: any scan,
aligned automatically, fitted, written in the scan's own frame and units, with the codes, the
person's detail and colour beside them. ``fit DIR --out OUTDIR`` fits a folder, resumably."""

from __future__ import annotations

import json
from pathlib import Path

from imface.config import FitConfig
from imface.errors import UserError
from imface.fit.scan import FitResult, fit_scan_job, fit_scans_job
from imface.jobs import drive, drive_with_tqdm


def add_arguments(parser) -> None:
    from imface.io import DEFAULT_CHECKPOINT

    parser.add_argument(
        "scan", help="a mesh (OBJ, PLY, STL, OFF, GLB) or point cloud (PLY, XYZ, NPY), or a folder of them"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="fitted mesh (.ply/.obj/.stl/.glb) in the scan frame; for a folder: the output folder",
    )
    parser.add_argument("--report", help="JSON report: seconds, iterations, Chamfer, F-score, transform")
    parser.add_argument(
        "--codes",
        help="write the fitted codes as JSON; the person's detail (C.detail.safetensors) and a "
        "coloured scan's colour (C.albedo.safetensors) go beside it, named in the codes file, "
        "for rig",
    )
    parser.add_argument("--albedo", help="write the colour in template space here (.safetensors)")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--iterations", type=int, default=FitConfig.iterations)
    parser.add_argument(
        "--restarts", type=int, default=FitConfig.restarts, help="fits from other starts (best kept)"
    )
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument(
        "--unit",
        choices=("auto", "m", "cm", "mm"),
        default="auto",
        help="the scan's unit (auto: guessed from its size)",
    )
    parser.add_argument(
        "--landmarks",
        help="5 or 7 points in the scan's frame (JSON list or text, one x y z a line) to start "
        "the alignment: outer eye corners, nose tip, mouth corners; or eye corners (right outer, "
        "right inner, left inner, left outer), nose tip, mouth corners",
    )
    parser.add_argument(
        "--no-detail",
        action="store_true",
        help="keep the codes-only surface (no refinement of the fitted mesh towards the scan)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=FOLDER_BATCH,
        help="for a folder: scans whose codes are fitted together (each scan keeps its own samples and loss)",
    )
    parser.add_argument(
        "--keep-poor",
        action="store_true",
        help="write a fit that stays far from the scan (flagged in the report)",
    )


def run(args) -> int:
    from imface.io import MESH_FORMATS, load_checkpoint
    from imface.paths import check_output_file, check_output_folder
    from imface.scan.load import load_landmarks, parse_unit

    if Path(args.scan).is_dir():  # refuse an unwritable or wrong output before the long fit
        check_output_folder(args.out)
    else:
        check_output_file(args.out, MESH_FORMATS)
        for extra in (args.report, args.codes):
            if extra:
                check_output_file(extra)
        if args.albedo:
            check_output_file(args.albedo, (".safetensors",))
    checkpoint = load_checkpoint(args.checkpoint)
    cfg = FitConfig(iterations=args.iterations, restarts=args.restarts, detail_stage=not args.no_detail)
    options = {
        "unit": args.unit,
        "landmarks": load_landmarks(args.landmarks) if args.landmarks else None,
        "on_poor_fit": "flag" if args.keep_poor else "raise",
    }
    if Path(args.scan).is_dir():
        if options["landmarks"] is not None:
            raise UserError("--landmarks is for one scan, not a folder")
        if args.albedo:
            raise UserError("--albedo is for one scan; a folder's colours go beside each codes file")
        folder, out = Path(args.scan), Path(args.out)
        return fit_folder(checkpoint, folder, out, cfg, args.resolution, args.batch, **options)
    from imface.scan.load import load_scan

    scan = load_scan(args.scan, parse_unit(args.unit))
    result = drive_with_tqdm(fit_scan_job(checkpoint, scan, cfg, resolution=args.resolution, **options))
    _write_fit(
        result,
        checkpoint,
        Path(args.out),
        args.report and Path(args.report),
        args.codes and Path(args.codes),
        scan,
        args.albedo and Path(args.albedo),
    )
    keys = ("ok", "seconds", "iterations", "chamfer_mm", "fscore_1mm", "scan_to_fit_median_mm")
    keys += ("unit", "colour")
    print(json.dumps({k: result.report.get(k) for k in keys}))
    return 0


def _write_fit(
    result: FitResult,
    checkpoint,
    mesh_path: Path,
    report: Path | None,
    codes: Path | None,
    scan=None,
    albedo_path: Path | None = None,
):
    """The fitted mesh (with the scan's colours when it has any), codes, albedo, the person's
    detail in template space (beside the codes) and report."""
    from imface.appearance import albedo_path_for_codes
    from imface.io import save_mesh  # atomic
    from imface.paths import atomic_write_text
    from imface.tagged_file import companion_path

    albedo, colors = _fitted_colour(result, checkpoint, scan)
    save_mesh(mesh_path, result.vertices, result.faces, colors)
    if albedo is not None:
        albedo_path = albedo_path or (albedo_path_for_codes(codes) if codes else None)
        if albedo_path:
            albedo.save(albedo_path, {"checkpoint_sha256": checkpoint.sha256})
            result.report["albedo"] = albedo_path.name
    if codes:
        data = {"z_id": result.codes.z_id[0].tolist(), "z_exp": result.codes.z_exp[0].tolist()}
        data["checkpoint_sha256"] = checkpoint.sha256
        if result.detail is not None:  # rig, generate and the editor put it on every face
            detail_path = companion_path(codes, "detail")
            result.detail.save(detail_path, {"checkpoint_sha256": checkpoint.sha256})
            data["detail"] = result.report["detail"] = detail_path.name
        if (
            albedo is not None
            and albedo_path is not None
            and albedo_path.parent.resolve() == codes.parent.resolve()
        ):
            data["albedo"] = albedo_path.name  # rig --codes and the editor pick it up
        atomic_write_text(codes, json.dumps(data))
    if report:  # written last: its presence marks a finished scan (fit_folder resumes on it)
        tmp = report.with_suffix(".tmp")
        tmp.write_text(json.dumps(result.report, indent=2))
        tmp.replace(report)


def _fitted_colour(result: FitResult, checkpoint, scan):
    """(albedo, per-vertex colours of the fitted mesh) for a coloured scan, else (None, None);
    the report says which ("colour")."""
    from imface.appearance import colours_for
    from imface.correspond import template_coordinates
    from imface.session import scan_albedo

    if scan is None or getattr(scan, "colours", None) is None:
        result.report["colour"] = "none (the scan has no colour: neutral albedo)"
        return None, None
    albedo = scan_albedo(checkpoint.model, result, scan)
    if albedo is None:
        result.report["colour"] = "none (no colour of the scan lies on the fitted face: neutral albedo)"
        return None, None
    model_vertices = result.alignment.to_model(result.vertices)
    to_template = lambda p: template_coordinates(checkpoint.model, result.codes, p)  # noqa: E731
    colors = colours_for(to_template, model_vertices, albedo)
    result.report["colour"] = albedo.describe()
    return albedo, colors


def scans_in(folder: Path) -> list[Path]:
    """Scan files (meshes and point clouds) under `folder`, recursively, sorted."""
    from imface.scan.load import MESH_SUFFIXES, POINT_SUFFIXES

    suffixes = MESH_SUFFIXES | POINT_SUFFIXES
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


FOLDER_BATCH = 4  # scans whose codes are fitted together (4 take ~3 scans' time on 2 cores)


def fit_folder(
    checkpoint,
    folder: Path,
    out: Path,
    config: FitConfig,
    resolution: int = 128,
    batch: int = FOLDER_BATCH,
    **options,
) -> int:
    """Fit every scan of a folder into OUT/<relative path>.ply (+ .report.json, .codes.json),
    `batch` scans at a time with their codes fitted as one batch (`fit_scans_job`).

    Resumable: scans whose report exists are skipped, so an interrupted run loses at most the
    batch in flight. A scan that fails (not a face, unreadable) gets an .error.txt and the rest go on.
    """
    from tqdm import tqdm

    scans = scans_in(folder)
    if not scans:
        raise UserError(f"{folder}: no scans (OBJ, PLY, STL, OFF, GLB, XYZ, NPY) to fit")
    stems = {scan: out / scan.relative_to(folder).with_suffix("") for scan in scans}
    todo = [scan for scan in scans if not _beside(stems[scan], ".report.json").exists()]
    counts = {"fitted": 0, "skipped": len(scans) - len(todo), "failed": 0}
    batch = max(batch, 1)
    with tqdm(total=len(todo), desc="fit", unit="scan") as bar:
        for first in range(0, len(todo), batch):
            group = todo[first : first + batch]
            for scan, outcome in _fit_group(checkpoint, group, config, resolution, options):
                stem = stems[scan]
                stem.parent.mkdir(parents=True, exist_ok=True)
                error = _beside(stem, ".error.txt")
                if isinstance(outcome, UserError):
                    error.write_text(f"{outcome}\n")
                    counts["failed"] += 1
                else:
                    result, loaded = outcome
                    codes = _beside(stem, ".codes.json")
                    _write_fit(
                        result,
                        checkpoint,
                        _beside(stem, ".ply"),
                        _beside(stem, ".report.json"),
                        codes,
                        loaded,
                    )
                    error.unlink(missing_ok=True)
                    counts["fitted"] += 1
                bar.update()
    print(json.dumps(counts | {"out": str(out)}))
    return 0 if counts["failed"] == 0 else 1


def _beside(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)


def _fit_group(checkpoint, paths: list[Path], config: FitConfig, resolution: int, options: dict):
    """(path, (FitResult, loaded scan) or the UserError that stopped it) for each scan."""
    from imface.scan.load import load_scan, parse_unit

    loaded: dict[Path, object] = {}
    outcomes: dict[Path, object] = {}
    for path in paths:
        try:
            loaded[path] = load_scan(path, parse_unit(options.get("unit")))
        except UserError as exc:
            outcomes[path] = exc
    job = fit_scans_job(
        checkpoint,
        list(loaded.values()),
        config,
        resolution=resolution,
        unit=options.get("unit"),
        on_poor_fit=options.get("on_poor_fit", "raise"),
    )
    for path, result in zip(loaded, drive(job), strict=True):
        outcomes[path] = result if isinstance(result, UserError) else (result, loaded[path])
    return [(path, outcomes[path]) for path in paths]
