"""Clean surfaces: floating pieces, flaps and blobs of a model's faces inside the 100 mm region.

Random identity codes (within +-3 std along the principal directions of the trained codes) x the
trained expression codes nearest to each FaceScape expression; each face is extracted WITHOUT the
largest-piece guard and its connected pieces inside the region are counted.

    python benchmarks/clean_surfaces.py [--checkpoint C] [--identities 50] [--resolution 96]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from machine import describe as describe_machine

from imface.extract import extract_narrow_band, face_sdf
from imface.io import DEFAULT_CHECKPOINT, load_checkpoint
from imface.metrics import surface_defects
from imface.model import Codes


def expression_codes(ckpt) -> dict[str, torch.Tensor]:
    """One trained expression code per FaceScape label (the first of each), plus neutral."""
    out = {"1_neutral": torch.zeros(ckpt.config.exp_dim)}
    for label, code in zip(ckpt.codes.expression_labels, ckpt.codes.z_exp, strict=True):
        out.setdefault(label, code)
    return {k: v for k, v in out.items() if not k.endswith("_random")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--identities", type=int, default=50)
    parser.add_argument("--resolution", type=int, default=96)
    parser.add_argument("--max-std", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    ckpt = load_checkpoint(args.checkpoint)
    stats = ckpt.stats["id"]
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.identities, stats.basis.shape[0], generator=generator).clamp(
        -args.max_std, args.max_std
    )
    identities = stats.mean + (noise * stats.basis_std) @ stats.basis
    expressions = expression_codes(ckpt)
    faces, dirty, components, stray, worst = 0, 0, 0, 0.0, None
    started = time.perf_counter()
    for i, z_id in enumerate(identities):
        for label, z_exp in expressions.items():
            codes = Codes(z_id[None], z_exp[None])
            mesh = extract_narrow_band(face_sdf(ckpt.model, codes), resolution=args.resolution).mesh
            d = surface_defects(mesh.vertices, mesh.faces)
            faces += 1
            components += d.components
            stray += d.stray_area_mm2
            if not d.clean:
                dirty += 1
                if worst is None or d.stray_area_mm2 > worst["stray_area_mm2"]:
                    worst = {
                        "identity": i,
                        "expression": label,
                        "components": d.components,
                        "stray_area_mm2": round(d.stray_area_mm2, 1),
                    }
    print(
        json.dumps(
            {
                "benchmark": "clean_surfaces",
                "checkpoint": str(args.checkpoint),
                "sha256": ckpt.sha256[:12],
                "machine": describe_machine(),
                "resolution": args.resolution,
                "identities": args.identities,
                "expressions": len(expressions),
                "faces": faces,
                "faces_with_stray_pieces": dirty,
                "mean_components": round(components / faces, 3),
                "mean_stray_area_mm2": round(stray / faces, 2),
                "worst": worst,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
