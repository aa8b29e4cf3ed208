"""Never a torn mesh: check a morphed mesh, repair the vertices the morph could not place, or say
that the last good mesh must stay.

The fixed-topology morph (``MorphEngine``) solves one small system per vertex; where it does not
converge (large identity steps, folds, a mouth that opens) the vertex lands anywhere and the
triangles around it become spikes. Repair is local: each failed vertex starts again from its last
good position and takes a few Newton steps along the SDF gradient onto the new surface (only the
failed vertices are evaluated). The result is then checked geometrically; a mesh that still has an
edge longer than the bound or a vertex outside the region is refused, and the caller keeps the last
good mesh on screen until a re-extraction arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from imface.model.imface import ImFace, PreparedCodes
from imface.units import REGION_RADIUS

PROJECT_STEPS = 3  # Newton steps onto f = 0 for a failed vertex
SURFACE_TOL = 2e-3  # model units (0.2 mm): |f| a repaired vertex must reach
EDGE_FACTOR = 4.0  # an edge may grow to this many times the base mesh's longest edge
MIN_EDGE_BOUND = 0.08  # model units (8 mm): the bound for very fine base meshes
MAX_EDGE = 0.15  # model units (15 mm): no edge of a shown face is longer (coarse previews: ~7 mm)
MAX_JUMP = 0.15  # model units (15 mm): farther from the last good position per frame is a spike
# Shown faces are cropped to the region sphere (REGION_RADIUS); a morph may grow the face a little
# past it (a larger identity), a vertex beyond this radius is a spike.
MORPH_RADIUS = REGION_RADIUS * 1.3


def edge_lengths(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Length of every triangle edge (3 per face)."""
    if len(faces) == 0:
        return np.zeros(0, np.float32)
    tri = vertices[faces]
    return np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2).ravel()


def edge_bound(base_vertices: np.ndarray, faces: np.ndarray) -> float:
    """The longest edge a sound morph of this base mesh may have."""
    longest = float(edge_lengths(base_vertices, faces).max(initial=0.0))
    return min(max(EDGE_FACTOR * longest, MIN_EDGE_BOUND), MAX_EDGE)


@dataclass
class Soundness:
    sound: bool
    longest_edge: float
    farthest_vertex: float
    reason: str = ""


def check_mesh(vertices: np.ndarray, faces: np.ndarray, max_edge: float, radius: float) -> Soundness:
    """A mesh is sound when every vertex is finite and inside `radius` and no edge is longer than
    `max_edge` (the two marks of a torn morph: spikes and giant triangles)."""
    if not np.isfinite(vertices).all():
        return Soundness(False, float("inf"), float("inf"), "non-finite vertices")
    longest = float(edge_lengths(vertices, faces).max(initial=0.0))
    farthest = float(np.linalg.norm(vertices, axis=1).max(initial=0.0))
    if farthest > radius:
        return Soundness(False, longest, farthest, f"a vertex {farthest:.2f} units from the centre")
    if longest > max_edge:
        return Soundness(False, longest, farthest, f"an edge of {longest * 100:.0f} mm")
    return Soundness(True, longest, farthest)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals."""
    v = np.asarray(vertices, np.float32)
    n = np.zeros_like(v)
    if len(faces):
        fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
        for k in range(3):
            np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def reproject(model: ImFace, prep: PreparedCodes, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Newton steps p <- p - f grad f / |grad f|^2 onto the zero level set of the prepared face.
    Returns (points, |f| after the last step)."""
    device = model.template_landmarks.device
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)).to(device)
    f = torch.zeros(len(x), device=device)
    for _ in range(PROJECT_STEPS):
        with torch.enable_grad():
            probe = x.detach().requires_grad_(True)
            f = model.query(probe, prep, detail=False).sdf
            (grad,) = torch.autograd.grad(f.sum(), probe)
        step = f.detach()[:, None] * grad / (grad * grad).sum(-1, keepdim=True).clamp_min(1e-6)
        x = x - step.clamp(-MAX_JUMP, MAX_JUMP)
    with torch.no_grad():
        f = model.query(x, prep, detail=False).sdf
    return x.detach().cpu().numpy(), f.abs().cpu().numpy()


@dataclass
class Repair:
    vertices: np.ndarray  # the morphed vertices with the failed ones repaired
    failed: int  # vertices the morph did not place
    repaired: int  # of those, placed by re-projection
    soundness: Soundness

    @property
    def sound(self) -> bool:
        return self.soundness.sound


def repair_morph(
    model: ImFace,
    prep: PreparedCodes,
    vertices: np.ndarray,
    converged: np.ndarray,
    last_good: np.ndarray,
    faces: np.ndarray,
    max_edge: float,
    radius: float = MORPH_RADIUS,
) -> Repair:
    """Re-project the vertices the morph did not place (or placed as spikes) from their last good
    positions, then check the whole mesh."""
    v = np.array(vertices, dtype=np.float32, copy=True)
    jump = np.linalg.norm(v - last_good, axis=1)
    bad = ~np.asarray(converged, bool) | ~np.isfinite(v).all(1) | (jump > MAX_JUMP)
    bad |= np.linalg.norm(v, axis=1) > radius
    failed = int(bad.sum())
    repaired = 0
    if failed:
        start = last_good[bad] + _neighbour_motion(faces, v - last_good, bad)
        fixed, residual = reproject(model, prep, start)
        ok = residual <= SURFACE_TOL
        idx = np.flatnonzero(bad)
        v[idx] = np.where(ok[:, None], fixed, last_good[bad])
        repaired = int(ok.sum())
    return Repair(v, failed, repaired, check_mesh(v, faces, max_edge, radius))


def _neighbour_motion(faces: np.ndarray, motion: np.ndarray, bad: np.ndarray, rounds: int = 12):
    """Motion of the failed vertices guessed from their placed neighbours (averaged outward over
    a few rings), so a repaired vertex moves with the surface around it instead of lagging."""
    from scipy.sparse import coo_matrix

    n = len(motion)
    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    adjacency = coo_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n)).tocsr()
    known = (~bad).astype(np.float32)
    guess = np.where(bad[:, None], 0.0, motion).astype(np.float32)
    for _ in range(rounds):
        weight = adjacency @ known
        spread = (adjacency @ (guess * known[:, None])) / np.maximum(weight, 1e-6)[:, None]
        newly = bad & (weight > 0)
        guess[newly] = spread[newly]
        known = np.where(newly, 1.0, known).astype(np.float32)
    return guess[bad]


def crop_to_region(vertices: np.ndarray, faces: np.ndarray, radius: float = REGION_RADIUS):
    """Keep the faces whose three vertices lie inside the region sphere (what the model was trained
    on; the surface outside it is unconstrained). Returns (vertices, faces) re-indexed."""
    inside = np.linalg.norm(vertices, axis=1) <= radius
    keep = faces[inside[faces].all(1)]
    used = np.unique(keep)
    remap = np.full(len(vertices), -1, np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[keep]
