"""Interactive extraction benchmark: prints one JSON line.

    python benchmarks/morph.py [--resolution 256] [--checkpoint PATH] [--threads N]

Measures, in one run and for the same codes: the dense R^3 extraction (the official method), the
narrow band (time, fraction of grid points evaluated), band reuse after a small code step, and
fixed-topology morph ticks at ~20 k vertices (plus a smaller preview mesh), each fast mesh's
Chamfer to the dense mesh. Uses the shipped checkpoint when present, otherwise a default-size
face-like network overfitted on the spot (imface.testing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from machine import describe as describe_machine

from imface.config import ModelConfig
from imface.extract import MorphEngine, extract_dense, extract_narrow_band, face_sdf
from imface.model.imface import Codes
from imface.testing import chamfer_mm, face_like_model, sample_codes


def load_model(path: str, steps: int):
    if Path(path).exists():
        from imface.io import load_checkpoint

        ckpt = load_checkpoint(path)
        model = ckpt.model.eval()
        codes = ckpt.codes
        if codes is not None and hasattr(codes, "z_exp"):
            return (
                model,
                Codes(codes.z_id[:1].clone(), codes.z_exp[:1].clone()),
                f"checkpoint:{path}",
            )
        return model, sample_codes(model.config, seed=0, std=0.1), f"checkpoint:{path}"
    model = face_like_model(ModelConfig(), steps=steps)
    return (
        model,
        sample_codes(model.config, seed=0),
        f"face_like_model(default ModelConfig, {steps} steps)",
    )


def log(message: str) -> None:
    print(f"[morph benchmark] {message}", file=sys.stderr, flush=True)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1e3


def step_codes(codes: Codes, exp: float = 0.0, ident: float = 0.0, seed: int = 1) -> Codes:
    """A small slider move: Gaussian steps relative to the code size."""
    gen = torch.Generator().manual_seed(seed)
    scale = lambda z: z.std().clamp_min(1e-3)  # noqa: E731
    z_exp = codes.z_exp + exp * scale(codes.z_exp) * torch.randn(codes.z_exp.shape, generator=gen)
    z_id = codes.z_id + ident * scale(codes.z_id) * torch.randn(codes.z_id.shape, generator=gen)
    return Codes(z_id, z_exp)


def morph_ticks(model, base_mesh, c0, c1, ticks: int, preview: bool = False):
    """A slider drag from c0 to c1 in `ticks` steps; returns (first tick ms, mean later tick ms,
    final result, engine). The first tick also computes the exact Jacobians."""
    engine = MorphEngine(model, base_mesh, c0)
    times, result = [], None
    for k in range(1, ticks + 1):
        t = k / ticks
        codes = Codes(c0.z_id + t * (c1.z_id - c0.z_id), c0.z_exp + t * (c1.z_exp - c0.z_exp))
        result = engine.morph(codes, preview=preview)
        times.append(result.ms)
    return times[0], sum(times[1:]) / max(len(times) - 1, 1), result, engine


def resolution_for(vertices: int, mesh, resolution: int) -> int:
    """Grid resolution whose mesh has about `vertices` vertices (vertex count ~ R^2)."""
    return max(16, round(resolution * (vertices / max(mesh.num_vertices, 1)) ** 0.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--coarse-resolution", type=int, default=64)
    parser.add_argument("--checkpoint", default="resources/imface_default.safetensors")
    parser.add_argument("--morph-vertices", type=int, default=20000)
    parser.add_argument("--preview-vertices", type=int, default=5000)
    parser.add_argument("--ticks", type=int, default=6)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    res, coarse = args.resolution, args.coarse_resolution

    (model, c0, source), train_ms = timed(lambda: load_model(args.checkpoint, args.train_steps))
    c1 = step_codes(c0, exp=0.05, seed=1)  # small expression slider step
    c_id = step_codes(c0, ident=0.05, seed=2)  # small identity slider step

    base, _ = timed(lambda: extract_narrow_band(face_sdf(model, c0), res, coarse))
    band, band_ms = timed(lambda: extract_narrow_band(face_sdf(model, c1), res, coarse))
    reuse, reuse_ms = timed(lambda: extract_narrow_band(face_sdf(model, c1), res, coarse, previous=base))
    log(f"narrow band {band_ms:.0f} ms ({band.fraction_evaluated:.3f}), reuse {reuse_ms:.0f} ms")

    r_morph = resolution_for(args.morph_vertices, base.mesh, res)
    morph_base = extract_narrow_band(face_sdf(model, c0), r_morph, max(16, r_morph // 4)).mesh
    first_ms, tick_ms, morph, engine = morph_ticks(model, morph_base, c0, c1, args.ticks)
    _, preview20_ms, preview20, _ = morph_ticks(model, morph_base, c0, c1, args.ticks, True)
    _, id_tick_ms, morph_id, _ = morph_ticks(model, morph_base, c0, c_id, args.ticks)
    # Identity-step reference: the (reused) narrow band, equal to dense (checked above for c1);
    # a second dense pass would double the run time.
    dense_id = extract_narrow_band(face_sdf(model, c_id), res, coarse, previous=base).mesh

    log(f"morph ticks {tick_ms:.0f} / preview {preview20_ms:.0f} / identity {id_tick_ms:.0f} ms")
    r_prev = resolution_for(args.preview_vertices, base.mesh, res)
    prev_base = extract_narrow_band(face_sdf(model, c0), r_prev, max(16, r_prev // 4)).mesh
    _, preview_ms, preview, prev_engine = morph_ticks(model, prev_base, c0, c1, args.ticks, True)
    log(f"preview ticks {preview_ms:.0f} ms at {prev_base.num_vertices} vertices; dense next")
    # Dense last: by far the slowest pass (the official method, the reference for every Chamfer).
    dense, dense_ms = timed(lambda: extract_dense(face_sdf(model, c1), res))

    out = {
        "benchmark": "morph",
        "model": source,
        "params": sum(p.numel() for p in model.parameters()),
        "machine": describe_machine(),
        "device": "cpu",
        "model_setup_ms": round(train_ms),
        "resolution": res,
        "dense_ms": round(dense_ms),
        "dense_vertices": dense.num_vertices,
        "narrow_band_ms": round(band_ms),
        "narrow_band_fraction": round(band.fraction_evaluated, 4),
        "narrow_band_vertices": band.mesh.num_vertices,
        "narrow_band_chamfer_mm": round(chamfer_mm(band.mesh, dense), 5),
        "band_reuse_ms": round(reuse_ms),
        "band_reused": reuse.reused,
        "band_reuse_fraction": round(reuse.fraction_evaluated, 4),
        "band_reuse_chamfer_mm": round(chamfer_mm(reuse.mesh, dense), 5),
        "morph_vertices": morph_base.num_vertices,
        "morph_first_tick_ms": round(first_ms, 1),
        "morph_tick_ms": round(tick_ms, 1),
        "morph_speedup_vs_dense": round(dense_ms / tick_ms, 1),
        "morph_failed": morph.failed,
        "morph_chamfer_mm": round(chamfer_mm(engine.mesh(morph), dense), 5),
        "morph_preview_tick_ms": round(preview20_ms, 1),
        "morph_preview_failed": preview20.failed,
        "morph_preview_chamfer_mm": round(chamfer_mm(engine.mesh(preview20), dense), 5),
        "morph_identity_tick_ms": round(id_tick_ms, 1),
        "morph_identity_failed": morph_id.failed,
        "morph_identity_chamfer_mm_vs_band": round(chamfer_mm(engine.mesh(morph_id), dense_id), 5),
        "preview_vertices": prev_base.num_vertices,
        "preview_tick_ms": round(preview_ms, 1),
        "preview_chamfer_mm": round(chamfer_mm(prev_engine.mesh(preview), dense), 5),
    }
    out["targets"] = {
        "narrow_band_fraction<=0.15": out["narrow_band_fraction"] <= 0.15,
        "narrow_band_chamfer<0.05mm": out["narrow_band_chamfer_mm"] < 0.05,
        "narrow_band_vertices_within_1%": abs(band.mesh.num_vertices / dense.num_vertices - 1) <= 0.01,
        "morph_speedup>=50": out["morph_speedup_vs_dense"] >= 50,
        "morph_chamfer<0.1mm": out["morph_chamfer_mm"] < 0.1,
        "preview_tick_20k<=250ms": out["morph_preview_tick_ms"] <= 250,
        "preview_tick_5k<=250ms": out["preview_tick_ms"] <= 250,
        "verified_tick_20k<=250ms": out["morph_tick_ms"] <= 250,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
