"""Fitting real scans and held-out synthetic adults, each in random poses and units.

    python benchmarks/real_scans.py [--real ../shared/real_scans] [--synthetic 4] [--poses 2]
        [--checkpoint CKPT] [--out benchmarks/results/real_scans_2core_cpu.json]

Real scans: every mesh of the folder (skipped when it does not exist; it is not part of the
repository), in millimetres, shown to `fit_scan` as it comes in pose 0 and then rotated,
moved and written in m, cm or mm (no unit, no landmarks given). Synthetic: new adults from the
synthetic generator with a seed the training corpus does not use. Per scan and pose: accepted
or refused, Chamfer and F@1mm inside the face region (model frame, mm), median and p90
scan-to-fit distance, seconds; per scan: the run-to-run difference between poses (fitted
surfaces compared in the model frame, and the relative code difference). Prints JSON.
"""

from __future__ import annotations

import os

# as `python -m imface` and the editor run: numpy's BLAS on one thread (imface/__main__.py)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import describe as describe_machine  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from imface.config import FitConfig  # noqa: E402
from imface.errors import UserError  # noqa: E402
from imface.evaluate import pca_baseline  # noqa: E402
from imface.fit.refine import refine_to_scan  # noqa: E402
from imface.fit.samples import surface_samples, surface_truth, visible_surface  # noqa: E402
from imface.fit.scan import fit_scan, surface_scores  # noqa: E402
from imface.io import DEFAULT_CHECKPOINT, load_checkpoint  # noqa: E402
from imface.samples.cache import Corpus  # noqa: E402
from imface.scan.load import MESH_SUFFIXES, Scan, load_scan  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FROM_MM = {"m": 0.001, "cm": 0.1, "mm": 1.0}
STAGES = ("align_seconds", "sample_seconds", "fit_seconds", "extract_seconds", "detail_seconds")


def posed(scan: Scan, pose: int, rng) -> tuple[Scan, str]:
    """Pose 0: the scan as it comes; later poses: a random rotation, shift and unit."""
    if pose == 0:
        return scan, "mm"
    unit = str(rng.choice(list(FROM_MM)))
    rotation = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
    v = (scan.vertices @ rotation.T + rng.uniform(-300, 300, 3)) * FROM_MM[unit]
    return Scan(v, scan.faces, unit, scan.path), unit


def fit_one(checkpoint, scan: Scan, cfg: FitConfig, resolution: int, pca=None) -> dict:
    started = time.perf_counter()
    try:
        result = fit_scan(checkpoint, scan, cfg, resolution=resolution, on_poor_fit="flag")
    except UserError as exc:
        return {"accepted": False, "error": str(exc), "seconds": round(time.perf_counter() - started, 2)}
    r = result.report
    row = {
        "accepted": True,
        "fit_ok": r["ok"],
        "unit": r["unit"],
        **_scores(r),
        "scan_to_fit_median_mm": round(r["scan_to_fit_median_mm"], 3),
        "scan_to_fit_p90_mm": round(r["scan_to_fit_p90_mm"], 3),
        # the fit, load to detailed mesh; scoring the report comes on top (score_seconds)
        "seconds": round(time.perf_counter() - started - r["score_seconds"], 2),
        "score_seconds": r["score_seconds"],
        "stage_seconds": {k: r[k] for k in STAGES if k in r},
        "_model_vertices": result.alignment.to_model(result.vertices),
        "_codes": np.concatenate([result.codes.z_id[0].numpy(), result.codes.z_exp[0].numpy()]),
    }
    if "codes_only" in r:
        row["codes_only"] = _scores(r["codes_only"])
    if pca is not None:
        row["pca"] = pca_side_by_side(pca, scan, result.alignment)
    return row


def _scores(r: dict) -> dict:
    """Chamfer and F@1mm in the 100 mm sphere, and on the scan's footprint only."""
    out = {"chamfer_mm": round(r["chamfer_mm"], 3), "fscore_1mm": round(r["fscore_1mm"], 2)}
    if "on_scan" in r:
        out["on_scan_chamfer_mm"] = round(r["on_scan"]["chamfer_mm"], 3)
        out["on_scan_fscore_1mm"] = round(r["on_scan"]["fscore_1mm"], 2)
    return out


def pca_side_by_side(pca, scan: Scan, alignment) -> dict:
    """The PCA 3DMM fitted to the same samples after the same alignment, scored the same way,
    without and with the same detail stage."""
    surface = visible_surface(alignment.to_model(scan.vertices), scan.faces)
    samples, truth = surface_samples(surface), surface_truth(surface)
    points, normals = (samples[k].numpy() for k in ("surface_points", "surface_normals"))
    coefficients = pca.fit(points)
    vertices = pca.vertices(torch.from_numpy(coefficients)).detach().numpy().astype(np.float64)
    plain = surface_scores(vertices, pca.faces, truth)
    detail = refine_to_scan(vertices, pca.faces, points, normals)
    refined = surface_scores(detail.apply(vertices), pca.faces, truth)
    return {**_scores(refined), "codes_only": _scores(plain)}


def pca_from(corpus_path: str, checkpoint):
    corpus = Corpus.open(corpus_path)
    train_keys, _ = corpus.split_for(checkpoint.codes.identity_labels)
    return pca_baseline(corpus, train_keys, checkpoint.config.id_dim + checkpoint.config.exp_dim)


def run_to_run(rows: list[dict]) -> dict | None:
    """Fitted surfaces of poses 1.. against pose 0 in the model frame (vertex to nearest vertex
    of the other's 128^3 mesh, mm) and their codes' relative difference."""
    fitted = [r for r in rows if r.get("accepted")]
    if len(fitted) < 2:
        return None
    ref = fitted[0]
    tree = cKDTree(ref["_model_vertices"])
    d = np.concatenate([tree.query(r["_model_vertices"])[0] for r in fitted[1:]]) * 100.0
    codes = [np.linalg.norm(r["_codes"] - ref["_codes"]) / np.linalg.norm(ref["_codes"]) for r in fitted[1:]]
    return {
        "surface_median_mm": round(float(np.median(d)), 3),
        "surface_p95_mm": round(float(np.quantile(d, 0.95)), 3),
        "codes_relative_max": round(float(max(codes)), 4),
    }


def synthetic_scans(folder: Path, count: int, seed: int) -> list[Path]:
    """Neutral adults of the wide population (with eyeballs) that the training corpus never saw
    (its seeds differ)."""
    from imface.corpus import synth

    recipe = synth.Recipe(seed=seed, extra=0, only=("1_neutral",), population="wide")
    synth.write_corpus(folder, count, recipe, progress=False)
    return sorted(folder.glob("*/1_neutral.ply"))


def summarise(rows: list[dict]) -> dict:
    acc = [r for r in rows if r["accepted"]]
    out = {
        "scans_x_poses": len(rows),
        "accepted": len(acc),
        "acceptance_rate": round(len(acc) / max(len(rows), 1), 3),
    }
    medians = ("chamfer_mm", "fscore_1mm", "scan_to_fit_median_mm", "scan_to_fit_p90_mm")
    medians += ("seconds", "score_seconds")
    for key in medians:
        if acc:
            out[f"{key}_median"] = round(float(np.median([r[key] for r in acc])), 3)
    for key in ("on_scan_chamfer_mm", "on_scan_fscore_1mm"):
        if acc and all(key in r for r in acc):
            out[f"{key}_median"] = round(float(np.median([r[key] for r in acc])), 3)
    for part in ("codes_only", "pca"):
        for key in ("chamfer_mm", "fscore_1mm", "on_scan_chamfer_mm", "on_scan_fscore_1mm"):
            values = [r[part][key] for r in acc if key in r.get(part, {})]
            if values:
                out[f"{part}_{key}_median"] = round(float(np.median(values)), 3)
    for key in ("chamfer_mm", "on_scan_chamfer_mm"):
        values = [r["pca"]["codes_only"][key] for r in acc if key in r.get("pca", {}).get("codes_only", {})]
        if values:
            out[f"pca_codes_only_{key}_median"] = round(float(np.median(values)), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", default=str(REPO.parent / "shared" / "real_scans"))
    parser.add_argument("--synthetic", type=int, default=4, help="held-out synthetic adults")
    parser.add_argument("--synthetic-seed", type=int, default=9001)
    parser.add_argument("--poses", type=int, default=2, help="poses per scan (0: as it comes)")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--iterations", type=int, default=FitConfig.iterations)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--notes", default="")
    parser.add_argument(
        "--pca-corpus", help="the prepared cache the checkpoint was trained on: adds the PCA 3DMM"
    )
    parser.add_argument("--no-detail", action="store_true", help="codes-only fits")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    checkpoint = load_checkpoint(args.checkpoint)
    cfg = FitConfig(iterations=args.iterations, detail_stage=not args.no_detail)
    pca = pca_from(args.pca_corpus, checkpoint) if args.pca_corpus else None
    rng = np.random.default_rng(args.seed)
    real_dir = Path(args.real)
    groups: dict[str, list[Path]] = {"real": [], "synthetic": []}
    if real_dir.is_dir():
        groups["real"] = sorted(p for p in real_dir.iterdir() if p.suffix.lower() in MESH_SUFFIXES)
    per_scan, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic > 0:
            groups["synthetic"] = synthetic_scans(Path(tmp), args.synthetic, args.synthetic_seed)
        for group, paths in groups.items():
            rows: list[dict] = []
            results[f"{group}_rows"] = rows
            for path in paths:
                scan = load_scan(path, "mm")
                poses = []
                for pose in range(args.poses):
                    shown, unit = posed(scan, pose, rng)
                    row = {"group": group, "scan": path.name if group == "real" else path.parent.name}
                    row |= {"pose": pose, "true_unit": unit}
                    row |= fit_one(checkpoint, shown, cfg, args.resolution, pca)
                    poses.append(row)
                    print(json.dumps(_public(row)), flush=True)
                rows += [_public(r) for r in poses]
                per_scan.append({"group": group, "scan": poses[0]["scan"], "run_to_run": run_to_run(poses)})
                results[group] = summarise(rows)
                write_report(args, results, per_scan, final=False)
    write_report(args, results, per_scan, final=True)


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def write_report(args, results: dict, per_scan: list, final: bool) -> None:
    report = {
        "benchmark": "real_scans",
        "complete": final,
        "machine": describe_machine(),
        "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
        "checkpoint": Path(args.checkpoint).name,
        "iterations": args.iterations,
        "poses": args.poses,
        "notes": args.notes,
        "summary": {k: v for k, v in results.items() if not k.endswith("_rows")},
        "run_to_run": per_scan,
        "rows": {k: v for k, v in results.items() if k.endswith("_rows")},
    }
    text = json.dumps(report, indent=1)
    if final:
        print(text)
    if args.out:
        out = Path(args.out)
        tmp_out = out.with_suffix(".tmp")
        tmp_out.write_text(text + "\n")
        tmp_out.replace(out)


if __name__ == "__main__":
    main()
