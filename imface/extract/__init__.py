"""Neural SDF -> mesh, fast enough for latent sliders (Qt-free).

- `extract_dense`: the official method (every sample of a R^3 grid), the reference.
- `extract_narrow_band`: coarse pass + fine grid only near the surface; reuses the previous band
  for nearby codes when a boundary check proves it still contains the surface.
- `MorphEngine`: fixed topology; moves the vertices of one mesh onto the surface of new codes by
  inverting the backward warp per vertex (dense correspondence for free).
- `refine` (cancellable coarse -> fine generator) and `LatestValue` for the editor's worker.

CLI: `python -m imface extract ...` and `python -m imface export-topology --resolution R`.
"""

from __future__ import annotations

from imface.extract.cli import (
    add_export_topology_arguments,
    add_extract_arguments,
    run_export_topology,
    run_extract,
    save_mesh,
)
from imface.extract.grid import (
    BandResult,
    BandState,
    Cancelled,
    Mesh,
    dense_volume,
    evaluate,
    extract_dense,
    extract_narrow_band,
    marching_cubes,
    reuse_band,
)
from imface.extract.morph import MorphEngine, MorphResult, warp_jacobian
from imface.extract.stream import BandCache, LatestValue, face_mesh, face_sdf, refine, template_sdf

__all__ = [
    "BandCache",
    "BandResult",
    "BandState",
    "Cancelled",
    "LatestValue",
    "Mesh",
    "MorphEngine",
    "MorphResult",
    "add_export_topology_arguments",
    "add_extract_arguments",
    "dense_volume",
    "evaluate",
    "extract_dense",
    "extract_narrow_band",
    "face_mesh",
    "face_sdf",
    "marching_cubes",
    "refine",
    "reuse_band",
    "run_export_topology",
    "run_extract",
    "save_mesh",
    "template_sdf",
    "warp_jacobian",
]
