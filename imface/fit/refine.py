"""Person-specific detail after the codes: a regularised test-time refinement of the fitted mesh.

The latent codes carry what the model learned; a real person has more (their own lips, lids, a
scar) than any code of a model trained on a few dozen people can say. This stage moves each
vertex of the fitted mesh along its normal towards the scan, as one scalar offset per vertex:

    minimise  sum_i w_i (s_i - t_i)^2  +  smoothness * sum_edges (s_i - s_j)^2  +  damping * sum_i s_i^2

t_i is the point-to-plane distance from vertex i to its nearest scan sample (along the vertex
normal), w_i is 1 where that sample is within `reach_mm` and faces the same way, 0 elsewhere.
Where the scan has no data (holes, closed or missing eyes, beyond a cut border) the offsets are
a smooth continuation that fades to zero, so nothing is invented there; moving only along the
normal keeps every vertex's template coordinates, so correspondence is the model's. The system is
sparse, symmetric positive definite and solved a few times with the nearest samples refreshed
(a non-rigid ICP along normals).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import trimesh
from scipy.sparse.linalg import cg
from scipy.spatial import cKDTree

from imface.errors import UserError
from imface.tagged_file import load_tagged, save_tagged
from imface.units import MM_PER_UNIT


@dataclass(frozen=True)
class DetailConfig:
    iterations: int = 4
    reach_mm: float = 4.0  # a vertex farther than this from every scan sample gets no data term
    min_cosine: float = 0.5  # vertex and scan normals must agree this well
    smoothness: float = 1.0  # per edge, relative to the data term (noise vs detail)
    damping: float = 0.002  # pulls unsupported offsets back to zero, far from the data
    max_offset_mm: float = 8.0  # a larger step is a wrong match, not detail


@dataclass
class Detail:
    offsets: np.ndarray  # (V,) model units along `normals`
    normals: np.ndarray  # (V, 3) unit vertex normals of the coarse (codes-only) mesh
    supported: np.ndarray  # (V,) bool: the vertex had scan data in the last pass

    def apply(self, vertices: np.ndarray) -> np.ndarray:
        return np.asarray(vertices, np.float64) + self.offsets[:, None] * self.normals

    def summary(self) -> dict[str, float]:
        mm = np.abs(self.offsets) * MM_PER_UNIT
        return {
            "detail_supported_percent": float(100 * self.supported.mean()) if len(mm) else 0.0,
            "detail_offset_mean_mm": float(mm.mean()) if len(mm) else 0.0,
            "detail_offset_p95_mm": float(np.quantile(mm, 0.95)) if len(mm) else 0.0,
        }


DETAIL_FORMAT = "imface-detail/1"
TEMPLATE_BOUND = 4.0  # template coordinates live near the unit sphere: larger ones mean a bad file
DETAIL_RADIUS = 0.02  # template units (2 mm): full offset this close to a sample, none at twice it
DETAIL_NEIGHBOURS = 4


@dataclass(eq=False)
class DetailMap:
    """A person's detail in template space: the offsets of a fitted mesh stored at its vertices'
    template coordinates. Every face of the model warps to the same template, so any face (another
    expression, a morph, a re-extraction at another resolution) takes the person's detail by
    looking its vertices' template coordinates up and moving them along their normals."""

    template: np.ndarray  # (N, 3) float32 template coordinates of the fitted mesh's vertices
    offsets: np.ndarray  # (N,) float32 model units along the normals
    source: str = ""
    _tree: object = None

    def __post_init__(self):
        self.template = np.ascontiguousarray(self.template, np.float32).reshape(-1, 3)
        self.offsets = np.ascontiguousarray(self.offsets, np.float32).reshape(-1)
        if len(self.template) != len(self.offsets) or not len(self.offsets):
            raise ValueError(f"detail map: {len(self.template)} points but {len(self.offsets)} offsets")

    def describe(self) -> str:
        mm = np.abs(self.offsets) * MM_PER_UNIT
        origin = f" of {self.source}" if self.source else ""
        return f"fitted detail{origin}: mean {mm.mean():.2f} mm, 95% {np.quantile(mm, 0.95):.2f} mm"

    def lookup(self, template: np.ndarray) -> np.ndarray:
        """(M,) offsets at template coordinates (inverse-distance weights of the nearest samples),
        fading to zero away from every sample (parts of a face the fitted mesh did not have)."""
        template = np.asarray(template, np.float32).reshape(-1, 3)
        if not len(template):
            return np.zeros(0, np.float32)
        if self._tree is None:
            self._tree = cKDTree(self.template)
        k = min(DETAIL_NEIGHBOURS, len(self.offsets))
        distance, index = self._tree.query(template, k=k)
        distance, index = distance.reshape(len(template), k), index.reshape(len(template), k)
        weights = 1.0 / np.maximum(distance, 1e-5) ** 2
        values = (self.offsets[index] * weights).sum(1) / weights.sum(1)
        cover = np.clip(2.0 - distance[:, 0] / DETAIL_RADIUS, 0.0, 1.0)
        return (cover * values).astype(np.float32)

    def apply(self, vertices: np.ndarray, faces: np.ndarray, template: np.ndarray) -> np.ndarray:
        """A face (model frame) with this detail: its vertices' template coordinates given."""
        return along_normals(vertices, faces, self.lookup(template))

    # -- files ---------------------------------------------------------------------------------
    def save(self, path, info: dict | None = None):
        """Write atomically as safetensors (template float32 (N, 3), offsets float32 (N,))."""
        meta = {"source": self.source, "unit": "model (1 = 100 mm)", **(info or {})}
        return save_tagged(
            path, DETAIL_FORMAT, "detail", meta, {"template": self.template, "offsets": self.offsets}
        )

    @classmethod
    def load(cls, path) -> DetailMap:
        """Read and check a detail file; every problem is one UserError line naming the file."""
        meta, tensors = load_tagged(path, DETAIL_FORMAT, "detail", "a detail file")
        template, offsets = tensors.get("template"), tensors.get("offsets")
        if template is None or offsets is None:
            raise UserError(f"{path}: detail file lacks 'template' or 'offsets'")
        if (
            template.dtype != np.float32
            or template.ndim != 2
            or template.shape[1:] != (3,)
            or not len(template)
        ):
            raise UserError(
                f"{path}: detail 'template' must be (N, 3) float32, got {template.shape} {template.dtype}"
            )
        if offsets.dtype != np.float32 or offsets.shape != template.shape[:1]:
            raise UserError(
                f"{path}: detail 'offsets' must be (N,) float32 like the template, got {offsets.shape}"
            )
        bound = DetailConfig().max_offset_mm / MM_PER_UNIT * 1.0001  # float32 of the clipped offsets
        if not (np.isfinite(template).all() and np.abs(template).max() <= TEMPLATE_BOUND):
            raise UserError(
                f"{path}: detail 'template' must be finite template coordinates (|x| <= {TEMPLATE_BOUND})"
            )
        if not (np.isfinite(offsets).all() and np.abs(offsets).max() <= bound):
            raise UserError(
                f"{path}: detail offsets must be finite and within {DetailConfig().max_offset_mm:g} mm"
            )
        return cls(template, offsets, str(meta.get("source", "")))


def along_normals(vertices: np.ndarray, faces: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """`vertices` moved by per-vertex `offsets` along the mesh's current vertex normals."""
    normals = trimesh.Trimesh(vertices, faces, process=False).vertex_normals
    return (np.asarray(vertices, np.float64) + np.asarray(offsets)[:, None] * normals).astype(np.float32)


def refine_to_scan(
    vertices: np.ndarray,
    faces: np.ndarray,
    scan_points: np.ndarray,
    scan_normals: np.ndarray,
    config: DetailConfig = DetailConfig(),
) -> Detail:
    """Offsets along the normals of a mesh (model frame) that bring it onto the scan samples
    (model frame, with unit normals) where the scan has data."""
    v = np.asarray(vertices, np.float64)
    normals = _vertex_normals(v, faces)
    if len(v) == 0 or len(scan_points) == 0:
        return Detail(np.zeros(len(v)), normals, np.zeros(len(v), bool))
    regulariser = _edge_laplacian(faces, len(v)) * config.smoothness
    regulariser = (regulariser + sp.identity(len(v), format="csr") * config.damping).tocsr()
    tree = cKDTree(np.asarray(scan_points, np.float64))
    scan_normals = np.asarray(scan_normals, np.float64)
    offsets = np.zeros(len(v))
    supported = np.zeros(len(v), bool)
    for _ in range(config.iterations):
        target, supported = _targets(v + offsets[:, None] * normals, normals, tree, scan_normals, config)
        weights = sp.diags(supported.astype(np.float64))
        system = (weights + regulariser).tocsr()
        rhs = weights @ target - regulariser @ offsets
        # conjugate gradients with a Jacobi preconditioner: the system is SPD and diagonally
        # dominant, a few hundred sparse products beat a direct factorisation per pass
        jacobi = sp.diags(1.0 / system.diagonal())
        step, _ = cg(system, rhs, rtol=1e-6, maxiter=400, M=jacobi)
        offsets = offsets + step
    limit = config.max_offset_mm / MM_PER_UNIT
    return Detail(np.clip(offsets, -limit, limit), normals, supported)


def _targets(points, normals, tree, scan_normals, config: DetailConfig):
    """Per vertex: the step along its normal to the tangent plane of its nearest scan sample,
    and whether that sample counts (near enough, facing the same way, not a wild step)."""
    distance, nearest = tree.query(points)
    q_normals = scan_normals[nearest]
    cosine = np.einsum("ij,ij->i", normals, q_normals)
    plane = np.einsum("ij,ij->i", tree.data[nearest] - points, q_normals)
    step = plane / np.maximum(cosine, config.min_cosine)
    ok = (distance * MM_PER_UNIT < config.reach_mm) & (cosine >= config.min_cosine)
    ok &= np.abs(step) * MM_PER_UNIT < config.max_offset_mm
    return np.where(ok, step, 0.0), ok


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    if len(faces) == 0:
        return np.zeros_like(vertices)
    mesh = trimesh.Trimesh(vertices, np.asarray(faces, np.int64), process=False)
    return np.asarray(mesh.vertex_normals, np.float64)


def _edge_laplacian(faces: np.ndarray, count: int) -> sp.csr_matrix:
    """Graph Laplacian D - A over the mesh edges (uniform weights: the extraction grid makes
    edges nearly equal, and it stays positive semi-definite on any triangle soup)."""
    f = np.asarray(faces, np.int64)
    a, b = f.ravel(), np.roll(f, -1, axis=1).ravel()  # every half-edge (0,1), (1,2), (2,0)
    keep = a != b
    a, b = a[keep], b[keep]
    # a sparse matrix sums repeated entries in linear time (np.unique's sort held the GIL for
    # 200 ms); an edge shared by two triangles is still one edge
    adjacency = sp.coo_matrix((np.ones(2 * len(a)), (np.r_[a, b], np.r_[b, a])), shape=(count, count)).tocsr()
    adjacency.data[:] = 1.0
    degree = sp.diags(np.asarray(adjacency.sum(axis=1)).ravel())
    return (degree - adjacency).tocsr()
