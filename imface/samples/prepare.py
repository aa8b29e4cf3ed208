"""Align, crop and sample every scan into the cache (``python -m imface prepare SRC --out CACHE``:
imface/samples/cli.py).

SRC is a synthetic corpus (``imface synth``), a FaceScape TU folder (``--landmarks
landmark_indices.npz`` for landmark alignment; automatic alignment otherwise), or any folder of
scans (automatic alignment). Scans run in parallel (``workers``), with a progress bar
(``prepare``) or as a job (``prepare_job``); finished scans are skipped on a re-run; each scan's
folder appears atomically when complete.

Every folder it writes or deletes lies inside the cache: scan keys are safe names
(``corpus.facescape``) and every path is checked again with ``imface.paths.confined``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from imface.config import BLEND_LANDMARK_IBUG68
from imface.corpus.facescape import ScanSource
from imface.errors import MeshError, UserError
from imface.jobs import Job, Progress, drive_with_tqdm
from imface.paths import atomic_output, confined
from imface.samples.cache import INDEX, check_record, write_index


def prepare(sources: list[ScanSource], out: Path, *args, progress: bool = True, **kwargs):
    """`prepare_job` run to its end with a tqdm bar; returns (records, [(key, error)])."""
    return drive_with_tqdm(prepare_job(sources, out, *args, **kwargs), disable=not progress)


def prepare_job(
    sources: list[ScanSource],
    out: Path,
    n_surface=250_000,
    n_space=15_000,
    workers=1,
    seed=0,
    unit=None,
    kind="scans",
) -> Job[tuple[list[dict], list[tuple[str, str]]]]:
    """The cache as a job: one Progress record per finished scan. The index is rewritten after
    every scan, so a cancelled or interrupted run keeps what is done and resumes from there."""
    out.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    if kind == "synthetic":
        _copy_registered_faces(sources, out)
    records = _existing_records(out, sources)
    todo = [s for s in sources if s.key not in records]
    failed: list[tuple[str, str]] = []
    yield Progress("Preparing scans", len(records), len(sources))
    jobs = [(s, str(out), n_surface, n_space, seed, unit) for s in todo]
    for key, record, error in _prepared(jobs, workers):
        if record:
            records[key] = record
            write_index(out, list(records.values()))
        else:
            failed.append((key, error))
        yield Progress("Preparing scans", len(records) + len(failed), len(sources), key)
    write_index(out, list(records.values()))
    return list(records.values()), failed


def _prepared(jobs, workers: int):
    """(key, record, error) of each scan as it finishes."""
    if workers <= 1:
        for job in jobs:
            yield _prepare_job(job)
        return
    pool = ProcessPoolExecutor(workers)
    try:
        for fut in as_completed([pool.submit(_prepare_job, j) for j in jobs]):
            yield fut.result()
    finally:  # a cancelled job drops the scans not yet started
        pool.shutdown(wait=True, cancel_futures=True)


def _remove_leftovers(out: Path) -> None:
    """Delete the .tmp-* folders of an interrupted run: real folders inside `out` only (a
    symlink named .tmp-* loses the link, never what it points to)."""
    for folder, dirs, _ in os.walk(out, followlinks=False):
        for name in [d for d in dirs if d.startswith(".tmp-")]:
            path = Path(folder) / name
            dirs.remove(name)
            if path.is_symlink():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)


def _existing_records(out: Path, sources) -> dict:
    records = {}
    for r in _indexed_records(out):
        if _finished(out, r["dir"]):
            records[r["key"]] = r
    for s in sources:  # folders finished after the last index write
        if s.key not in records and _finished(out, s.key):
            transform = json.loads((confined(out, s.key) / "transform.json").read_text())
            records[s.key] = _record(s, transform)
    return records


def _indexed_records(out: Path) -> list[dict]:
    """The records of an existing index; an unreadable index is rebuilt from the scan folders."""
    index = out / INDEX
    if not index.exists():
        return []
    try:
        records = json.loads(index.read_text())["scans"]
        for r in records:
            check_record(index, r)
        return records
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, UserError) as exc:
        print(f"note: {index} is unreadable ({str(exc)[:120]}); rebuilding it", file=sys.stderr)
        return []


def _finished(out: Path, relative: str) -> bool:
    """A complete scan folder inside `out` (a readable transform.json is written last)."""
    try:
        transform = confined(out, relative) / "transform.json"
    except UserError:  # an index entry that leads outside the cache is ignored
        return False
    try:
        return isinstance(json.loads(transform.read_text()), dict)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def _copy_registered_faces(sources, out: Path):
    faces = sources[0].path.parent.parent / "anny_faces.npy" if sources else None
    if faces is not None and faces.exists():
        with atomic_output(out / "registered_faces.npy") as tmp:
            np.save(tmp, np.load(faces).astype(np.int32))


def _record(src: ScanSource, transform: dict) -> dict:
    record = {
        "key": src.key,
        "identity": src.identity,
        "expression": src.expression,
        "neutral": src.neutral,
        "dir": src.key,
        "landmarks": transform.get("landmarks", "given"),
        "source": str(src.path),
    }
    if src.population:
        record["population"] = src.population
    return record


def _prepare_job(job):
    src, out, n_surface, n_space, seed, unit = job
    try:
        transform = prepare_scan(src, Path(out), n_surface, n_space, seed, unit)
        return src.key, _record(src, transform), None
    except MeshError as exc:
        return src.key, None, str(exc)
    except Exception as exc:  # one broken scan must not stop a long run
        return src.key, None, f"{type(exc).__name__}: {exc}"


def prepare_scan(src: ScanSource, out: Path, n_surface, n_space, seed=0, unit=None) -> dict:
    """Load, align, preprocess one scan; write its folder atomically; return transform info."""
    from imface.samples.preprocess import preprocess_mesh
    from imface.scan import align
    from imface.scan.load import load_scan

    scan = load_scan(src.path, unit or src.unit)
    if scan.faces is None:
        raise MeshError(
            f"{src.path}: a point cloud cannot be prepared for training "
            "(the hidden-surface step needs triangles)"
        )
    lm_scan, how = _landmarks_scan_frame(src, scan)
    if src.to_model is not None:
        m = np.asarray(src.to_model, dtype=np.float64)
        alignment = align.Alignment(m, float(np.cbrt(np.linalg.det(m[:3, :3]))), 0.0)
        method = "exact"
    elif lm_scan is not None:
        alignment = align.align_landmarks68(lm_scan, scan.metres)
        method = "landmarks68"
    else:
        alignment = align.align_scan(scan.vertices, scan.faces, unit or src.unit, path=str(src.path))
        method = "automatic"
    v_model = alignment.to_model(scan.vertices)
    rng = np.random.default_rng([seed, zlib.crc32(src.key.encode())])  # same on every run
    samples = preprocess_mesh(v_model, scan.faces, n_surface, n_space, rng)
    if lm_scan is not None:
        lm68 = alignment.to_model(lm_scan)
    else:  # no landmarks: the template's, projected onto this face
        lm68 = _project(align.template().landmarks68, samples.visible_vertices)
        how = "estimated"
    arrays = {
        "surface_points": samples.surface_points,
        "surface_normals": samples.surface_normals,
        "space_points": samples.space_points,
        "space_sdf": samples.space_sdf,
        "space_grad": samples.space_grad,
        "landmarks68": lm68,
        "landmarks5": lm68[list(BLEND_LANDMARK_IBUG68)],
        "gt_vertices": samples.visible_vertices,
        "gt_faces": samples.visible_faces,
        "sheet_vertices": samples.sheet_vertices,
        "sheet_faces": samples.sheet_faces,
    }
    if src.registered is not None and Path(src.registered).exists():
        arrays["registered_vertices"] = alignment.to_model(np.load(src.registered))
    info = {
        **alignment.to_dict(),
        "method": method,
        "landmarks": how,
        "scan_unit": scan.unit,
        "source": str(src.path),
    }
    _write_atomic(confined(out, src.key), arrays, info)
    return info


def _landmarks_scan_frame(src: ScanSource, scan):
    if src.landmarks68 is not None:
        return np.asarray(src.landmarks68, dtype=np.float64), "given"
    if src.landmark_indices is not None:
        idx = src.landmark_indices
        if idx.max() >= len(scan.vertices):
            raise MeshError(
                f"{src.path}: landmark indices exceed its {len(scan.vertices)} "
                "vertices (not a FaceScape TU model?)"
            )
        return scan.vertices[idx], "given"
    return None, "estimated"


def _project(points, vertices):
    from scipy.spatial import cKDTree

    return np.asarray(vertices)[cKDTree(vertices).query(points)[1]]


def _write_atomic(folder: Path, arrays: dict, info: dict) -> None:
    """Write into .tmp-<name>-<pid> beside `folder` (a path already confined to the cache),
    then swap it in."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, arr in arrays.items():
        a = np.asarray(arr)
        np.save(tmp / f"{name}.npy", a.astype(np.int32 if a.dtype.kind in "iu" else np.float32))
    (tmp / "transform.json").write_text(json.dumps(info))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
