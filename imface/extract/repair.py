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
# Where the surface changes topology under a drag (lips parting or closing, an eyelid) a fixed
# topology can only stretch; up to this fraction of faces is hidden instead of drawn as webbing
# until the next extraction re-meshes it, more and the last good mesh stays.
MAX_HIDDEN_FACES = 0.01


def edge_lengths(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Length of every triangle edge (3 per face; edge k runs from corner k-1 to corner k)."""
    if len(faces) == 0:
        return np.zeros(0, np.float32)
    v = np.asarray(vertices, np.float32)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    edges = np.stack([a - c, b - a, c - b], axis=1)
    return np.sqrt(np.einsum("fki,fki->fk", edges, edges)).ravel()


def adjacency(faces: np.ndarray, n: int):
    """Vertex adjacency of a triangle mesh as a sparse (n, n) matrix (build once per topology)."""
    from scipy.sparse import coo_matrix

    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    return coo_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n)).tocsr()


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
        # each face's normal to its three corners; bincount is ~2x faster than np.add.at, and
        # this runs for every live-morph frame while the GUI thread waits for the interpreter lock
        corners = faces.ravel()
        for k in range(3):
            n[:, k] = np.bincount(corners, weights=np.repeat(fn[:, k], 3), minlength=len(v))
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
    graph=None,
) -> Repair:
    """Re-project the vertices the morph did not place (or placed as spikes) from their last good
    positions, then check the whole mesh. `graph`: `adjacency(faces)`, when the caller keeps one."""
    graph = adjacency(faces, len(vertices)) if graph is None else graph
    v = np.array(vertices, dtype=np.float32, copy=True)
    jump = np.linalg.norm(v - last_good, axis=1)
    bad = ~np.asarray(converged, bool) | ~np.isfinite(v).all(1) | (jump > MAX_JUMP)
    bad |= np.linalg.norm(v, axis=1) > radius
    repaired = _reproject_from_neighbours(model, prep, v, bad, last_good, graph)
    # a placed vertex can still be a spike its neighbours do not follow (the one-step preview of
    # a live drag drifts where the warp bends): both ends of every too-long edge try again
    stretched = _stretched_vertices(v, faces, max_edge) & ~bad
    if stretched.any():
        repaired += _reproject_from_neighbours(model, prep, v, stretched, last_good, graph)
    failed = int(bad.sum() + stretched.sum())
    return Repair(v, failed, repaired, check_mesh(v, faces, max_edge, radius))


def _reproject_from_neighbours(model, prep, v, bad, last_good, graph) -> int:
    """Move the `bad` vertices of `v` (in place) with their placed neighbours, then onto the surface;
    where that fails they keep their last good position. Returns how many were placed."""
    if not bad.any():
        return 0
    start = last_good[bad] + _neighbour_motion(graph, v - last_good, bad)
    fixed, residual = reproject(model, prep, start)
    ok = residual <= SURFACE_TOL
    v[np.flatnonzero(bad)] = np.where(ok[:, None], fixed, last_good[bad])
    return int(ok.sum())


def visible_part(vertices: np.ndarray, faces: np.ndarray, hidden: np.ndarray | None):
    """(vertices, faces) of what is drawn when the `hidden` faces are not."""
    if hidden is None:
        return vertices, faces
    shown = faces[~hidden]
    used = np.unique(shown)
    remap = np.zeros(len(vertices), np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[shown]


def stretched_faces(vertices: np.ndarray, faces: np.ndarray, max_edge: float) -> np.ndarray:
    """(F,) bool: faces with an edge longer than `max_edge`."""
    return (edge_lengths(vertices, faces).reshape(-1, 3) > max_edge).any(1)


def _stretched_vertices(vertices: np.ndarray, faces: np.ndarray, max_edge: float) -> np.ndarray:
    """Vertices at either end of an edge longer than `max_edge`."""
    flags = np.zeros(len(vertices), bool)
    if len(faces):
        long = edge_lengths(vertices, faces).reshape(-1, 3) > max_edge
        # edge k of a face runs between corners k and k-1 (see edge_lengths)
        for k in range(3):
            flags[faces[long[:, k], k]] = True
            flags[faces[long[:, k], k - 1]] = True
    return flags


def _neighbour_motion(graph, motion: np.ndarray, bad: np.ndarray, rounds: int = 12):
    """Motion of the failed vertices guessed from their placed neighbours (averaged outward over
    a few rings), so a repaired vertex moves with the surface around it instead of lagging.
    Works on the rings around the failed vertices only (a live drag repairs a few dozen)."""
    region = bad.copy()
    for _ in range(rounds):
        region |= (graph @ region.astype(np.float32)) > 0
    index = np.flatnonzero(region)
    local = graph[index][:, index]
    bad, motion = bad[index], motion[index]
    known = (~bad).astype(np.float32)
    guess = np.where(bad[:, None], 0.0, motion).astype(np.float32)
    for _ in range(rounds):
        weight = local @ known
        spread = (local @ (guess * known[:, None])) / np.maximum(weight, 1e-6)[:, None]
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
