"""Neural SDF -> mesh on a regular grid: dense reference and coarse-to-fine narrow band.

Grid convention: `resolution` samples per axis spanning [-bound, bound] (cell h = 2 bound / (R-1)),
as the official ImFace extraction does. The narrow band groups fine cells into blocks of `stride`
cells; block corners form the coarse grid (it may run a little past `bound` so it stays uniform).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

SdfFn = Callable[[Tensor], Tensor]
CancelCheck = Callable[[], bool]

DEFAULT_CHUNK = 65536


class Cancelled(Exception):
    """Raised inside an extraction when its cancel check fires."""


@dataclass
class Mesh:
    """A triangle mesh in the model frame."""

    vertices: np.ndarray  # (V, 3) float32
    faces: np.ndarray  # (F, 3) int64

    def __post_init__(self):
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32).reshape(-1, 3)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64).reshape(-1, 3)

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    def largest_component(self) -> Mesh:
        """The connected piece with the most faces: drops the small floating surfaces that an SDF
        learned from open scans can grow far from the face (e.g. beside the ears)."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        if len(self.faces) == 0:
            return self
        n = self.num_vertices
        rows = np.concatenate([self.faces[:, 0], self.faces[:, 1]])
        cols = np.concatenate([self.faces[:, 1], self.faces[:, 2]])
        graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
        _, label = connected_components(graph, directed=False)
        face_label = label[self.faces[:, 0]]
        keep = self.faces[face_label == np.bincount(face_label).argmax()]
        used = np.unique(keep)
        remap = np.full(n, -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        return Mesh(self.vertices[used], remap[keep])


@dataclass
class BandState:
    """What a narrow-band extraction leaves for the next one (band reuse)."""

    resolution: int
    bound: float
    volume: np.ndarray  # (R, R, R) float32: exact SDF in the band, coarse interpolation elsewhere
    band: np.ndarray  # (R, R, R) bool: samples evaluated exactly
    fresh_evaluations: int = 0  # cost of the last fresh extraction (reuse must stay below it)


@dataclass
class BandResult:
    mesh: Mesh
    state: BandState
    fraction_evaluated: float  # network evaluations / resolution^3
    reused: bool  # True when the previous band was reused (no coarse pass)
    coarse_mesh: Mesh | None = None  # marching cubes of the coarse grid (None when reused)


# -- evaluation -------------------------------------------------------------------------------
def _check(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled


def evaluate(
    sdf_fn: SdfFn,
    points: Tensor,
    chunk: int = DEFAULT_CHUNK,
    cancel: CancelCheck | None = None,
) -> np.ndarray:
    """SDF at points (N, 3) in chunks, cancellable between chunks -> float32 numpy (N,)."""
    out = np.empty(points.shape[0], dtype=np.float32)
    with torch.no_grad():
        for start in range(0, points.shape[0], chunk):
            _check(cancel)
            values = sdf_fn(points[start : start + chunk])
            out[start : start + values.shape[0]] = values.detach().float().cpu().numpy().reshape(-1)
    return out


def _axis(resolution: int, bound: float) -> np.ndarray:
    return np.linspace(-bound, bound, resolution, dtype=np.float64)


def _points_from_indices(index: np.ndarray, resolution: int, bound: float, device) -> Tensor:
    """Flat indices into an (R, R, R) grid -> (N, 3) coordinates (x = first axis)."""
    i, j, k = np.unravel_index(index, (resolution,) * 3)
    h = 2.0 * bound / (resolution - 1)
    xyz = np.stack([i, j, k], axis=1).astype(np.float32) * np.float32(h) - np.float32(bound)
    return torch.from_numpy(xyz).to(device)


def _evaluate_indices(sdf_fn, index, resolution, bound, chunk, cancel, device) -> np.ndarray:
    """Evaluate flat grid indices in slabs so the coordinate tensor never holds the whole grid."""
    out = np.empty(index.shape[0], dtype=np.float32)
    slab = max(chunk, 1) * 8
    for start in range(0, index.shape[0], slab):
        pts = _points_from_indices(index[start : start + slab], resolution, bound, device)
        out[start : start + pts.shape[0]] = evaluate(sdf_fn, pts, chunk, cancel)
    return out


# -- marching cubes ---------------------------------------------------------------------------
def marching_cubes(volume: np.ndarray, spacing: float, origin: float, backend: str = "auto") -> Mesh:
    """Zero level set of a (R, R, R) SDF volume, negative inside; faces wind outwards.

    backend "auto" uses the optional CUDA marching cubes when importable and the volume is on a GPU
    (torch tensor); otherwise scikit-image on CPU.
    """
    if backend in ("auto", "cuda") and isinstance(volume, Tensor) and volume.is_cuda:
        mesh = _cuda_marching_cubes(volume, spacing, origin)
        if mesh is not None:
            return mesh
        if backend == "cuda":
            raise RuntimeError("CUDA marching cubes requested but no backend is installed")
    if isinstance(volume, Tensor):
        volume = volume.detach().cpu().numpy()
    if not (volume.min() < 0 < volume.max()):
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3)))
    from skimage.measure import marching_cubes as sk_marching_cubes

    # With the SDF negative inside, "descent" winds faces with outward normals.
    verts, faces, _, _ = sk_marching_cubes(
        volume, level=0.0, spacing=(spacing,) * 3, gradient_direction="descent"
    )
    return Mesh(verts + origin, faces)


def _cuda_marching_cubes(volume: Tensor, spacing: float, origin: float) -> Mesh | None:
    """Optional GPU backend (PyTorch3D); None when it is not installed."""
    try:
        from pytorch3d.ops.marching_cubes import marching_cubes as p3d_marching_cubes
    except ImportError:
        return None
    # PyTorch3D takes (D, H, W) = (z, y, x) volumes and returns (x, y, z) in [-1, 1]; the isolevel
    # is exceeded inside, so negate the SDF.
    verts, faces = p3d_marching_cubes(-volume.permute(2, 1, 0)[None].float(), 0.0, return_local_coords=True)
    if not verts or verts[0].shape[0] == 0:
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3)))
    half = (volume.shape[0] - 1) * spacing / 2
    v = verts[0].cpu().numpy() * half + origin + half
    return Mesh(v, faces[0].cpu().numpy()[:, ::-1])


# -- dense reference --------------------------------------------------------------------------
def extract_dense(
    sdf_fn: SdfFn,
    resolution: int = 256,
    bound: float = 1.0,
    chunk: int = DEFAULT_CHUNK,
    device: str | torch.device = "cpu",
    cancel: CancelCheck | None = None,
) -> Mesh:
    """The official method: the SDF at every grid sample, then marching cubes."""
    volume = dense_volume(sdf_fn, resolution, bound, chunk, device, cancel)
    return marching_cubes(volume, 2.0 * bound / (resolution - 1), -bound)


def dense_volume(sdf_fn, resolution=256, bound=1.0, chunk=DEFAULT_CHUNK, device="cpu", cancel=None):
    index = np.arange(resolution**3, dtype=np.int64)
    values = _evaluate_indices(sdf_fn, index, resolution, bound, chunk, cancel, device)
    return values.reshape((resolution,) * 3)


# -- narrow band ------------------------------------------------------------------------------
def _stride(resolution: int, coarse_resolution: int) -> int:
    return max(1, (resolution - 1) // max(coarse_resolution - 1, 1))


def _coarse_pass(sdf_fn, resolution, bound, stride, chunk, cancel, device):
    """SDF on block corners: a uniform grid of spacing stride * h, possibly a bit past `bound`."""
    blocks = math.ceil((resolution - 1) / stride)
    h = 2.0 * bound / (resolution - 1)
    axis = torch.arange(blocks + 1, dtype=torch.float32) * (stride * h) - bound
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    values = evaluate(sdf_fn, grid.to(device), chunk, cancel)
    return values.reshape((blocks + 1,) * 3)


def _active_blocks(coarse: np.ndarray, band: float) -> np.ndarray:
    """Blocks whose corners straddle the surface or come within `band` of it."""
    corners = [
        coarse[a : a + coarse.shape[0] - 1, b : b + coarse.shape[1] - 1, c : c + coarse.shape[2] - 1]
        for a in (0, 1)
        for b in (0, 1)
        for c in (0, 1)
    ]
    stack = np.stack(corners)
    near = np.abs(stack).min(0) <= band
    straddle = (stack.min(0) < 0) & (stack.max(0) > 0)
    return near | straddle


def _blocks_to_samples(blocks: np.ndarray, resolution: int, stride: int) -> np.ndarray:
    """Fine samples covered by active blocks, block faces included (they are shared)."""
    n = blocks.shape[0]
    i = np.arange(resolution)
    lo = np.clip((i - 1) // stride, 0, n - 1)  # block ending at i when i is on a block face
    hi = np.clip(i // stride, 0, n - 1)
    mask = np.zeros((resolution,) * 3, dtype=bool)
    for a in (lo, hi):
        for b in (lo, hi):
            for c in (lo, hi):
                mask |= blocks[np.ix_(a, b, c)]
    return mask


def _upsample(coarse: np.ndarray, resolution: int, stride: int) -> np.ndarray:
    """Trilinear interpolation of the coarse grid at every fine sample (separable, per axis)."""
    i = np.arange(resolution)
    k0 = i // stride
    t = ((i % stride) / stride).astype(np.float32)
    k1 = np.minimum(k0 + 1, coarse.shape[0] - 1)
    out = coarse
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = resolution
        w = t.reshape(shape)
        out = np.take(out, k0, axis=axis) * (1 - w) + np.take(out, k1, axis=axis) * w
    return out.astype(np.float32)


def extract_narrow_band(
    sdf_fn: SdfFn,
    resolution: int = 256,
    coarse_resolution: int = 64,
    band: float | None = None,
    previous: BandState | BandResult | None = None,
    *,
    bound: float = 1.0,
    chunk: int = DEFAULT_CHUNK,
    device: str | torch.device = "cpu",
    cancel: CancelCheck | None = None,
    reuse_margin: float | None = None,
) -> BandResult:
    """Coarse dense pass, then the fine grid only in blocks near the surface.

    band: |sdf| threshold on a block's corners (default: 0.75 block diagonals; blocks whose corners
    change sign are always refined). previous: the state of an extraction for nearby codes; its
    band is tried first (see `reuse_band`) and the coarse pass only runs when that check fails.
    """
    if isinstance(previous, BandResult):
        previous = previous.state
    if previous is not None and previous.resolution == resolution and previous.bound == bound:
        reused = reuse_band(sdf_fn, previous, reuse_margin, chunk=chunk, device=device, cancel=cancel)
        if reused is not None:
            return reused
    return _fresh_band(sdf_fn, resolution, coarse_resolution, band, bound, chunk, device, cancel)


@dataclass
class CoarseStage:
    """The coarse pass of a fresh narrow-band extraction (its mesh is the first preview)."""

    values: np.ndarray  # (B+1,)^3 SDF at block corners
    stride: int
    resolution: int
    bound: float
    mesh: Mesh


def coarse_stage(
    sdf_fn, resolution, coarse_resolution, bound=1.0, chunk=DEFAULT_CHUNK, device="cpu", cancel=None
):
    stride = _stride(resolution, coarse_resolution)
    h = 2.0 * bound / (resolution - 1)
    coarse = _coarse_pass(sdf_fn, resolution, bound, stride, chunk, cancel, device)
    return CoarseStage(coarse, stride, resolution, bound, marching_cubes(coarse, stride * h, -bound))


def fine_stage(sdf_fn, stage: CoarseStage, band=None, chunk=DEFAULT_CHUNK, device="cpu", cancel=None):
    resolution, bound, stride, coarse = stage.resolution, stage.bound, stage.stride, stage.values
    h = 2.0 * bound / (resolution - 1)
    # A surface point inside a block is within half a diagonal of its nearest corner (exact SDF);
    # 0.75 of the diagonal leaves margin for networks whose SDF is not exactly a distance.
    threshold = band if band is not None else 0.75 * stride * h * math.sqrt(3.0)
    mask = _blocks_to_samples(_active_blocks(coarse, threshold), resolution, stride)
    volume = _upsample(coarse, resolution, stride)
    # Samples on the coarse grid are known already; evaluate the rest of the band.
    known = np.zeros_like(mask)
    known[::stride, ::stride, ::stride] = True
    todo = np.flatnonzero(mask & ~known)
    volume.reshape(-1)[todo] = _evaluate_indices(sdf_fn, todo, resolution, bound, chunk, cancel, device)
    evaluated = coarse.size + todo.size
    mesh = marching_cubes(volume, h, -bound)
    state = BandState(resolution, bound, volume, mask, evaluated)
    return BandResult(mesh, state, evaluated / resolution**3, False, stage.mesh)


def _fresh_band(sdf_fn, resolution, coarse_resolution, band, bound, chunk, device, cancel):
    stage = coarse_stage(sdf_fn, resolution, coarse_resolution, bound, chunk, device, cancel)
    return fine_stage(sdf_fn, stage, band, chunk, device, cancel)


def reuse_band(
    sdf_fn: SdfFn,
    previous: BandState,
    margin: float | None = None,
    *,
    chunk: int = DEFAULT_CHUNK,
    device="cpu",
    cancel: CancelCheck | None = None,
    grow_cells: int = 4,
    max_rounds: int = 6,
) -> BandResult | None:
    """Re-extract for nearby codes in a thin shell around the previous surface.

    The shell is every sample whose previous |sdf| is within `margin` (default 3 fine cells).
    Correctness check: on the boundary of the evaluated region the new SDF must keep the previous
    sign and stay more than one fine cell away from zero (so no zero crossing can hide between it
    and the stale values outside). Where it fails, the region grows by `grow_cells` around the
    failing samples and is checked again; None (run the coarse pass) when that does not settle
    within `max_rounds` or would cost more than a fresh extraction did.
    """
    r, bound = previous.resolution, previous.bound
    h = 2.0 * bound / (r - 1)
    margin = 3.0 * h if margin is None else margin
    budget = previous.fresh_evaluations or previous.band.sum()
    volume = previous.volume.copy()
    evaluated = np.zeros(volume.shape, dtype=bool)
    todo = np.flatnonzero(np.abs(previous.volume) <= margin)
    count = 0
    for _ in range(max_rounds + 1):
        volume.reshape(-1)[todo] = _evaluate_indices(sdf_fn, todo, r, bound, chunk, cancel, device)
        evaluated.reshape(-1)[todo] = True
        count += todo.size
        bad = _unsafe_boundary(evaluated, previous.volume, volume, h)
        if not bad.any():
            mesh = marching_cubes(volume, h, -bound)
            state = BandState(r, bound, volume, evaluated, previous.fresh_evaluations)
            return BandResult(mesh, state, count / r**3, True, None)
        todo = np.flatnonzero(_dilate(bad, grow_cells) & ~evaluated)
        if todo.size == 0 or count + todo.size > budget:
            return None
    return None


def _unsafe_boundary(evaluated, old_volume, new_volume, h) -> np.ndarray:
    """Boundary samples where the surface may cross into the stale region."""
    boundary = _shell_boundary(evaluated)
    old, new = old_volume[boundary], new_volume[boundary]
    unsafe = (np.sign(old) != np.sign(new)) | (np.abs(new) <= h)
    bad = np.zeros_like(boundary)
    bad[boundary] = unsafe
    return bad


def _dilate(mask: np.ndarray, cells: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, structure=np.ones((3, 3, 3), dtype=bool), iterations=cells)


def _shell_boundary(shell: np.ndarray) -> np.ndarray:
    """Samples of the shell with a 6-neighbour outside it (where stale values meet new ones)."""
    inside = shell.copy()
    for axis in range(3):
        for step in (1, -1):
            neighbour = np.roll(shell, step, axis=axis)
            edge = [slice(None)] * 3
            edge[axis] = 0 if step == 1 else -1
            neighbour[tuple(edge)] = False  # np.roll wraps around; the grid does not
            inside &= neighbour
    return shell & ~inside
