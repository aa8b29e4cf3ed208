"""`python -m imface extract` and `python -m imface export-topology`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from imface.errors import UserError
from imface.extract.grid import Mesh, extract_dense, extract_narrow_band
from imface.extract.morph import MorphEngine
from imface.extract.stream import face_sdf, template_sdf
from imface.model.imface import Codes

DEFAULT_CHECKPOINT = "resources/imface_default.safetensors"


def save_mesh(mesh: Mesh, path: str | Path) -> None:
    import trimesh

    trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).export(str(path))


def load_mesh(path: str | Path) -> Mesh:
    import trimesh

    try:
        loaded = trimesh.load(str(path), process=False, force="mesh")
    except Exception as exc:  # trimesh raises many types for bad files
        raise UserError(f"{path}: cannot read mesh ({exc})") from exc
    return Mesh(np.asarray(loaded.vertices), np.asarray(loaded.faces))


def _load(path: str):
    if not Path(path).exists():
        raise UserError(f"{path}: checkpoint not found")
    try:
        from imface.io import load_checkpoint
    except ImportError as exc:
        raise UserError("this installation has no checkpoint loader (imface.io)") from exc
    return load_checkpoint(path)


def _codes(checkpoint, index: int | None, device) -> Codes:
    """Codes of trained face `index` (or zero codes: the mean face) from a loaded checkpoint."""
    model = checkpoint.model
    stored = getattr(checkpoint, "codes", None)
    if index is None or stored is None:
        return Codes.zeros(model.config, device=device)
    z_id, z_exp = stored.z_id, stored.z_exp
    if not 0 <= index < z_exp.shape[0]:
        raise UserError(f"--index {index} out of range (checkpoint holds {z_exp.shape[0]} faces)")
    id_row = index if z_id.shape[0] == z_exp.shape[0] else 0
    return Codes(z_id[id_row].to(device), z_exp[index].to(device))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="model checkpoint")
    parser.add_argument("--resolution", type=int, default=256, help="grid samples per axis")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", "-o", required=True, help="mesh file (.ply, .obj, .stl)")


def add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--index", type=int, default=None, help="trained face (default: mean face)")
    parser.add_argument("--method", choices=("band", "dense"), default="band")
    parser.add_argument("--coarse-resolution", type=int, default=64)
    parser.add_argument(
        "--topology",
        default=None,
        help="morph this mesh (from export-topology) instead of extracting",
    )


def run_extract(args: argparse.Namespace) -> int:
    checkpoint = _load(args.checkpoint)
    model = checkpoint.model.to(args.device).eval()
    codes = _codes(checkpoint, args.index, args.device)
    start = time.perf_counter()
    if args.topology:
        engine = MorphEngine(model, load_mesh(args.topology), None)
        result = engine.morph(codes)
        if result.failed:
            raise UserError(f"{result.failed} vertices did not converge; extract without --topology")
        mesh = engine.mesh(result)
    elif args.method == "dense":
        mesh = extract_dense(face_sdf(model, codes), args.resolution, device=args.device)
    else:
        sdf = face_sdf(model, codes)
        mesh = extract_narrow_band(sdf, args.resolution, args.coarse_resolution, device=args.device).mesh
    save_mesh(mesh, args.output)
    ms = (time.perf_counter() - start) * 1e3
    print(f"{args.output}: {mesh.num_vertices} vertices, {len(mesh.faces)} faces ({ms:.0f} ms)")
    return 0


def add_export_topology_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)


def run_export_topology(args: argparse.Namespace) -> int:
    """The template face (TempNet's zero set, in template space) at the chosen resolution: every
    face morphed from it (`extract --topology`) shares its vertices and triangles."""
    checkpoint = _load(args.checkpoint)
    model = checkpoint.model.to(args.device).eval()
    result = extract_narrow_band(template_sdf(model), args.resolution, device=args.device)
    save_mesh(result.mesh, args.output)
    print(f"{args.output}: template topology, {result.mesh.num_vertices} vertices")
    return 0
