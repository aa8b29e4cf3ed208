"""`python -m imface extract` and `python -m imface export-topology`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from imface.errors import UserError
from imface.extract.grid import Mesh, extract_dense, extract_narrow_band
from imface.extract.morph import MorphEngine
from imface.extract.stream import face_sdf, template_sdf
from imface.io import DEFAULT_CHECKPOINT, load_checkpoint
from imface.model.imface import Codes

MAX_FAILED_FRACTION = 0.005  # more unconverged vertices than this: the topology does not fit


def save_mesh(mesh: Mesh, path: str | Path) -> None:
    """Write a model-frame mesh in its format's unit (GLB metres, else mm) with a unit sidecar."""
    from imface.generate import write_face

    write_face(path, mesh.vertices, mesh.faces)


def load_mesh(path: str | Path) -> Mesh:
    """Read a mesh written by `save_mesh` back into the model frame."""
    import trimesh

    try:
        loaded = trimesh.load(str(path), process=False, force="mesh")
    except Exception as exc:  # trimesh raises many types for bad files
        raise UserError(f"{path}: cannot read mesh ({exc})") from None
    from imface.generate import file_unit, to_file_unit

    per_unit = float(to_file_unit(np.ones(1), file_unit(path))[0])  # file units per model unit
    return Mesh(np.asarray(loaded.vertices) / per_unit, np.asarray(loaded.faces))


def _codes(checkpoint, identity: int | None, expression: int | None, device) -> Codes:
    """Codes of a trained face: identity `identity` (default: the expression code's person, or the
    mean identity) with expression code `expression` (default: neutral)."""
    model, stored = checkpoint.model, checkpoint.codes
    if expression is not None and not 0 <= expression < stored.z_exp.shape[0]:
        raise UserError(f"--expression {expression} out of range (0..{stored.z_exp.shape[0] - 1})")
    if identity is None and expression is not None and stored.expression_identity:
        identity = stored.expression_identity[expression]
    if identity is not None and not 0 <= identity < stored.z_id.shape[0]:
        raise UserError(f"--identity {identity} out of range (0..{stored.z_id.shape[0] - 1})")
    z_id = stored.z_id[identity] if identity is not None else checkpoint.stats["id"].mean
    z_exp = stored.z_exp[expression] if expression is not None else torch.zeros(model.config.exp_dim)
    return Codes(z_id.to(device), z_exp.to(device), torch.tensor([expression is None], device=device))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="model checkpoint")
    parser.add_argument("--resolution", type=int, default=256, help="grid samples per axis")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", "-o", required=True, help="mesh file (.ply, .obj, .stl, .glb), in mm")


def add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--identity", type=int, help="training identity (default: the mean identity)")
    parser.add_argument("--expression", type=int, help="training expression code (default: neutral)")
    parser.add_argument("--method", choices=("band", "dense"), default="band")
    parser.add_argument("--coarse-resolution", type=int, default=64)
    parser.add_argument(
        "--topology",
        default=None,
        help="morph this mesh (from export-topology) instead of extracting",
    )


def run_extract(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint)
    model = checkpoint.model.to(args.device).eval()
    codes = _codes(checkpoint, args.identity, args.expression, args.device)
    start = time.perf_counter()
    if args.topology:
        engine = MorphEngine(model, load_mesh(args.topology), None)
        result = engine.morph(codes)
        if result.failed > MAX_FAILED_FRACTION * len(result.vertices):
            raise UserError(f"{result.failed} vertices did not converge; extract without --topology")
        if result.failed:  # a handful (thin creases of the template): keep them, but say so
            print(
                f"warning: {result.failed} of {len(result.vertices)} vertices did not converge",
                file=sys.stderr,
            )
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
    checkpoint = load_checkpoint(args.checkpoint)
    model = checkpoint.model.to(args.device).eval()
    result = extract_narrow_band(template_sdf(model), args.resolution, device=args.device)
    save_mesh(result.mesh, args.output)
    print(f"{args.output}: template topology, {result.mesh.num_vertices} vertices")
    return 0
