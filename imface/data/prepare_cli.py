"""``python -m imface prepare SRC --out CACHE``: ImFace preprocessing of a corpus, in parallel.

SRC is a synthetic corpus (``python -m imface synth``: per-scan JSON with landmarks and the
transform to the model frame). Each scan is moved to the model frame, cropped, freed of hidden
surfaces, turned into a pseudo-watertight sheet and sampled (see `preprocess.py`). Finished scans
are skipped on a re-run; an interrupted run loses at most the scans in flight.
"""

from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from imface.config import BLEND_LANDMARK_IBUG68
from imface.data.corpus import is_done, write_index, write_scan
from imface.errors import MeshError, UserError


def _apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float64) @ transform[:3, :3].T + transform[:3, 3]


def find_synthetic_scans(src: Path) -> list[dict]:
    """Jobs for every scan of a synthetic corpus (DIR/<id>/<k>_<name>.ply + .json)."""
    if not (src / "corpus.json").exists():
        raise UserError(
            f"{src}: not a synthetic corpus (no corpus.json); make one with `python -m imface synth`"
        )
    jobs = []
    for meta_path in sorted(src.glob("*/*.json")):
        mesh_path = meta_path.with_suffix(".ply")
        if mesh_path.exists():
            key = f"{meta_path.parent.name}/{meta_path.stem}"
            jobs.append({"key": key, "mesh": str(mesh_path), "meta": str(meta_path)})
    if not jobs:
        raise UserError(f"{src}: no scans found")
    return jobs


def prepare_scan(job: dict, out: str, n_surface: int, n_space: int, seed: int) -> str:
    """Preprocess one scan and write its cache folder; returns its key."""
    import trimesh

    from imface.data.preprocess import preprocess_mesh

    meta = json.loads(Path(job["meta"]).read_text())
    transform = np.asarray(meta["to_model"], dtype=np.float64)
    mesh = trimesh.load(job["mesh"], process=False)
    vertices = _apply(transform, mesh.vertices)
    rng = np.random.default_rng([seed, zlib.crc32(job["key"].encode())])  # same samples every run
    samples = preprocess_mesh(vertices, np.asarray(mesh.faces), n_surface, n_space, rng)
    landmarks68 = _apply(transform, meta["landmarks68"]).astype(np.float32)
    arrays = {
        "surface_points": samples.surface_points,
        "surface_normals": samples.surface_normals,
        "space_points": samples.space_points,
        "space_sdf": samples.space_sdf,
        "space_grad": samples.space_grad,
        "landmarks68": landmarks68,
        "landmarks5": landmarks68[list(BLEND_LANDMARK_IBUG68)],
        "gt_vertices": samples.visible_vertices,
        "gt_faces": samples.visible_faces,
    }
    registered = Path(job["mesh"]).with_suffix(".reg.npy")
    if registered.exists():
        arrays["registered_vertices"] = _apply(transform, np.load(registered)).astype(np.float32)
    record = {
        "key": job["key"],
        "identity": meta["identity"],
        "expression": meta["expression"],
        "neutral": bool(meta["neutral"]),
        "dir": job["key"],
        "synthetic": bool(meta.get("synthetic", False)),
    }
    write_scan(Path(out), record, arrays, transform)
    return job["key"]


def prepare(src, out, n_surface=250_000, n_space=15_000, workers=None, seed=0, progress=True) -> dict:
    src, out = Path(src), Path(out)
    jobs = find_synthetic_scans(src)
    out.mkdir(parents=True, exist_ok=True)
    faces = src / "anny_faces.npy"
    if faces.exists():
        np.save(out / "registered_faces.npy", np.load(faces))
    todo = [j for j in jobs if not is_done(out, j["key"])]
    workers = workers or max(1, os.cpu_count() or 1)
    failures = _run(todo, out, str(src), n_surface, n_space, workers, seed, progress)
    scans = write_index(out, str(src))
    return {
        "scans": len(scans),
        "prepared": len(todo) - len(failures),
        "skipped": len(jobs) - len(todo),
        "failed": failures,
    }


def _run(todo, out, source, n_surface, n_space, workers, seed, progress) -> dict[str, str]:
    from tqdm import tqdm

    failures: dict[str, str] = {}
    bar = tqdm(total=len(todo), desc="prepare", unit="scan", disable=not progress)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(prepare_scan, j, str(out), n_surface, n_space, seed): j["key"] for j in todo}
        for future in as_completed(futures):
            try:
                future.result()
            except (MeshError, UserError, ValueError, OSError) as exc:
                failures[futures[future]] = str(exc)
            bar.update(1)
            if bar.n % 25 == 0:
                write_index(out, source)  # keep a usable index while the run goes on
    bar.close()
    return failures


def add_arguments(parser) -> None:
    parser.add_argument("src", help="a synthetic corpus folder (python -m imface synth)")
    parser.add_argument("--out", required=True, help="cache folder")
    parser.add_argument("--surface", type=int, default=250_000, help="surface samples per scan (paper: 250k)")
    parser.add_argument("--space", type=int, default=15_000, help="space samples per scan (paper: 15k)")
    parser.add_argument("--workers", type=int, help="processes (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    summary = prepare(args.src, args.out, args.surface, args.space, args.workers, args.seed)
    for key, message in summary["failed"].items():
        print(f"skipped {key}: {message}")
    print(
        json.dumps({k: v for k, v in summary.items() if k != "failed"} | {"failed": len(summary["failed"])})
    )
    return 0
