"""ImFace preprocessing of a non-watertight scan already in the model frame (paper §3.5).

1. crop: keep triangles whose three vertices lie inside the unit sphere (100 mm);
2. hidden-surface removal: a vertex whose ray along +z (towards the viewer) hits the mesh is
   hidden (nasal and oral cavities, under the chin); triangles touching hidden vertices go;
3. pseudo-watertight sheet: 2D Delaunay triangulation of the remaining vertices' (x, y), lifted
   to their z: an oriented height field with normals towards +z;
4. samples: points on the visible surface with normals (oriented +z), and uniform points in the
   unit sphere with the signed distance to the sheet (negative behind it, the -z side) and its
   gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import Delaunay, cKDTree

from imface.errors import MeshError


@dataclass
class Sheet:
    """A height-field triangle sheet (model frame) with a point cache for distance queries."""

    vertices: np.ndarray
    faces: np.ndarray
    _samples: np.ndarray | None = field(default=None, repr=False)
    _sample_faces: np.ndarray | None = field(default=None, repr=False)
    _tree: cKDTree | None = field(default=None, repr=False)
    _sparse_tree: cKDTree | None = field(default=None, repr=False)

    def height(self, xy):
        """The sheet's z at each (x, y) (nan outside its 2D hull)."""
        tri = self.vertices[self.faces]
        out = np.full(len(xy), np.nan)
        for p_ids, t_ids in _candidate_pairs(tri, xy):
            z = _height_in_triangle(tri[t_ids], xy[p_ids])
            ok = np.isfinite(z)
            out[p_ids[ok]] = z[ok]
        return out

    def tree(self, density: int = 200_000):
        if self._tree is None:
            pts, fidx = _sample_triangles(self.vertices, self.faces, density, corners=True)
            self._samples, self._sample_faces, self._tree = pts, fidx, cKDTree(pts)
        return self._tree

    def sparse_tree(self):
        if self._sparse_tree is None:
            self._sparse_tree = cKDTree(self.tree().data[::16])
        return self._sparse_tree


@dataclass
class SDFSamples:
    surface_points: np.ndarray  # (Ns, 3) float32
    surface_normals: np.ndarray  # (Ns, 3) float32, unit, z >= 0
    space_points: np.ndarray  # (Nu, 3) float32, uniform in the unit sphere
    space_sdf: np.ndarray  # (Nu,) float32, negative behind the sheet
    space_grad: np.ndarray  # (Nu, 3) float32, unit gradient of the SDF
    sheet_vertices: np.ndarray  # pseudo-watertight sheet
    sheet_faces: np.ndarray
    visible_vertices: np.ndarray  # cropped, hidden-surface-free mesh (evaluation ground truth)
    visible_faces: np.ndarray


def crop_sphere(vertices, faces, radius=1.0):
    inside = np.linalg.norm(vertices, axis=1) < radius
    return _submesh(vertices, faces[inside[faces].all(1)])


def _submesh(vertices, faces):
    used = np.unique(faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces]


def hidden_vertices(vertices, faces, eps=1e-4):
    """True where the ray from the vertex along +z hits the mesh (the vertex is occluded)."""
    return _vertical_ray_hits(vertices, faces, eps)


def _vertical_ray_hits(vertices, faces, eps):
    """+z rays from every vertex against every triangle, as a 2D point-in-triangle test.

    All rays share the direction, so a ray hits a triangle when the vertex's (x, y) falls in the
    triangle's projection and the triangle lies above it there. (Equivalent to trimesh ray
    casting along +z, without needing embree.)
    """
    tri = vertices[faces]
    top = tri[:, :, 2].max(1)
    hit = np.zeros(len(vertices), dtype=bool)
    for v_ids, t_ids in _candidate_pairs(tri, vertices[:, :2]):
        # a triangle wholly below the vertex cannot occlude it (about half the pairs on a face),
        # and a vertex never occludes itself
        keep = top[t_ids] > vertices[v_ids, 2] + eps
        v_ids, t_ids = v_ids[keep], t_ids[keep]
        own = (faces[t_ids] == v_ids[:, None]).any(1)
        v_ids, t_ids = v_ids[~own], t_ids[~own]
        z = _height_in_triangle(tri[t_ids], vertices[v_ids, :2])
        hit[v_ids[np.isfinite(z) & (z > vertices[v_ids, 2] + eps)]] = True
    return hit


def _candidate_pairs(tri, xy, chunk=2_000_000):
    """(point, triangle) pairs whose 2D grid cells meet, in chunks: a uniform grid over the
    triangles' bounding boxes keeps the pairs few."""
    lo, hi = tri[:, :, :2].min(1), tri[:, :, :2].max(1)
    cell = max(float(np.median(hi - lo)), 1e-6)
    origin = np.minimum(xy.min(0), lo.min(0))
    clo = np.floor((lo - origin) / cell).astype(np.int64)
    chi = np.floor((hi - origin) / cell).astype(np.int64)
    ncol = int(max(chi[:, 1].max(), np.floor((xy[:, 1] - origin[1]) / cell).max())) + 2
    span = chi - clo + 1
    counts = span[:, 0] * span[:, 1]
    tri_id = np.repeat(np.arange(len(tri)), counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    w = span[tri_id, 1]
    keys = (clo[tri_id, 0] + k // w) * ncol + clo[tri_id, 1] + k % w
    order = np.argsort(keys, kind="stable")
    keys, tri_id = keys[order], tri_id[order]
    pc = np.floor((xy - origin) / cell).astype(np.int64)
    pkey = pc[:, 0] * ncol + pc[:, 1]
    start = np.searchsorted(keys, pkey, "left")
    n = np.searchsorted(keys, pkey, "right") - start
    pid = np.repeat(np.arange(len(xy)), n)
    j = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    cand = tri_id[np.repeat(start, n) + j]
    for s in range(0, len(pid), chunk):  # bound memory on huge meshes
        yield pid[s : s + chunk], cand[s : s + chunk]


def _height_in_triangle(tri, xy):
    """z of the triangle's plane at xy where xy lies inside the projected triangle, else nan."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    v0, v1, v2 = b[:, :2] - a[:, :2], c[:, :2] - a[:, :2], xy - a[:, :2]
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
        v = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
        z = a[:, 2] + u * (b[:, 2] - a[:, 2]) + v * (c[:, 2] - a[:, 2])  # nan off degenerate ones
        inside = (u >= -1e-9) & (v >= -1e-9) & (u + v <= 1 + 1e-9) & (np.abs(den) > 1e-18)
    return np.where(inside, z, np.nan)


def remove_hidden(vertices, faces):
    hidden = hidden_vertices(vertices, faces)
    return _submesh(vertices, faces[~hidden[faces].any(1)])


def delaunay_sheet(vertices) -> Sheet:
    """Height-field sheet over the visible vertices, triangles wound so normals point +z."""
    tri = Delaunay(vertices[:, :2]).simplices.astype(np.int64)
    e1 = vertices[tri[:, 1], :2] - vertices[tri[:, 0], :2]
    e2 = vertices[tri[:, 2], :2] - vertices[tri[:, 0], :2]
    flip = (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) < 0
    tri[flip] = tri[flip][:, [0, 2, 1]]
    return Sheet(vertices.astype(np.float64), tri)


def _sample_triangles(vertices, faces, n, rng=None, corners=False):
    rng = np.random.default_rng(0) if rng is None else rng
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    fidx = rng.choice(len(faces), n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w = np.stack([1 - s, s * (1 - r2), s * r2], 1)
    pts = np.einsum("nk,nkd->nd", w, tri[fidx])
    if corners:  # every triangle is then represented, however small
        pts = np.vstack([pts, tri.mean(1)])
        fidx = np.concatenate([fidx, np.arange(len(faces))])
    return pts, fidx


def _closest_on_triangles(p, a, b, c):
    """Closest points on triangles (a, b, c) to points p (all (N, 3)); Ericson's regions."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = p - b
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = p - c
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        den = va + vb + vc
        v, w = vb / den, vc / den
        out = a + ab * v[:, None] + ac * w[:, None]  # interior
        t_ab = d1 / (d1 - d3)
        t_ac = d2 / (d2 - d6)
        t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
    cases = [
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), b + (c - b) * t_bc[:, None]),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + ac * t_ac[:, None]),
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + ab * t_ab[:, None]),
        ((d6 >= 0) & (d5 <= d6), c),
        ((d3 >= 0) & (d4 <= d3), b),
        ((d1 <= 0) & (d2 <= 0), a),
    ]
    for mask, val in cases:  # later (vertex) regions take precedence over edges
        out = np.where(mask[:, None], val, out)
    return out


def sheet_sdf(sheet, query_points, k: int = 16):
    """Signed distance and unit gradient from points to the sheet (negative behind it, -z side).

    `sheet`: a Sheet (reuse it: its sampling is cached), SDFSamples, or (vertices, faces).

    Candidate triangles come from the nearest of a dense point sampling of the sheet; the exact
    point-triangle distance is then taken over them. The sign says which side of the height
    field the point is on (over the sheet: below it is behind, negative; beside the sheet:
    below its closest point is behind). Exact near
    the sheet; far away (> 1 cm) the candidates can miss the closest triangle, which overstates
    the distance by < 1 % at worst (checked against trimesh's exact closest_point).
    """
    if isinstance(sheet, SDFSamples):
        sheet = Sheet(sheet.sheet_vertices.astype(np.float64), sheet.sheet_faces)
    elif not isinstance(sheet, Sheet):  # a (vertices, faces) pair
        sheet = Sheet(np.asarray(sheet[0], np.float64), np.asarray(sheet[1], np.int64))
    q = np.asarray(query_points, dtype=np.float64)
    tree = sheet.tree()
    # A k-d tree over a 2D sheet answers far queries slowly (the search ball covers much of the
    # sheet), so only points within 5 mm use it directly; far points first find their region on a
    # 16x sparser sampling, then take candidate triangles around that anchor.
    distance, _ = tree.query(q, distance_upper_bound=0.05)
    near = np.isfinite(distance)
    sdf, grad = np.empty(len(q)), np.empty((len(q), 3))
    if near.any():
        sdf[near], grad[near] = _sheet_sdf(sheet, q[near], k)
    if (~near).any():
        _, anchor = sheet.sparse_tree().query(q[~near])
        around = sheet.sparse_tree().data[anchor]
        sdf[~near], grad[~near] = _sheet_sdf(sheet, q[~near], 2 * k, around=around)
    return sdf, grad


def _sheet_sdf(sheet: Sheet, q, k, around=None):
    """Exact distance to the best of the triangles under the k samples nearest to `around`
    (default: the query points themselves)."""
    tree = sheet.tree()
    _, nn = tree.query(q if around is None else around, k=k)
    cand = sheet._sample_faces[nn]  # (N, k)
    tri = sheet.vertices[sheet.faces]
    best_d = np.full(len(q), np.inf)
    best_p = np.zeros_like(q)
    best_f = np.zeros(len(q), dtype=np.int64)
    for j in range(k):
        f = cand[:, j]
        cp = _closest_on_triangles(q, tri[f, 0], tri[f, 1], tri[f, 2])
        d = np.linalg.norm(q - cp, axis=1)
        better = d < best_d
        best_d[better], best_p[better], best_f[better] = d[better], cp[better], f[better]
    fn = np.cross(tri[best_f, 1] - tri[best_f, 0], tri[best_f, 2] - tri[best_f, 0])
    fn /= np.linalg.norm(fn, axis=1, keepdims=True) + 1e-30
    offset = q - best_p
    sign = np.where(q[:, 2] < best_p[:, 2], -1.0, 1.0)  # beside the sheet: below is behind
    height = sheet.height(q[:, :2])
    over = np.isfinite(height)  # over the sheet: behind = below the height field
    sign[over] = np.where(q[over, 2] < height[over], -1.0, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        grad = np.where(best_d[:, None] > 1e-9, offset / best_d[:, None], fn) * sign[:, None]
    return sign * best_d, grad


def uniform_ball(n, rng, radius=1.0):
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d * radius * rng.random(n)[:, None] ** (1 / 3)


def visible_surface(vertices_model_frame, faces):
    """Steps 1-2: crop to the unit sphere, remove hidden surfaces (model frame)."""
    v, f = np.asarray(vertices_model_frame, np.float64), np.asarray(faces, np.int64)
    return _submesh(v, f[visible_faces(v, f)])


def visible_faces(vertices_model_frame, faces) -> np.ndarray:
    """Indices of the faces that steps 1-2 keep: inside the unit sphere, seen from the front."""
    v, f = np.asarray(vertices_model_frame, np.float64), np.asarray(faces, np.int64)
    inside = np.flatnonzero((np.linalg.norm(v, axis=1) < 1.0)[f].all(1))
    if len(inside) == 0:
        raise MeshError(
            "no part of the scan lies inside the model's unit sphere (is it aligned to the model frame?)"
        )
    cropped_v, cropped_f = _submesh(v, f[inside])
    kept = inside[~hidden_vertices(cropped_v, cropped_f)[cropped_f].any(1)]
    if len(kept) < 10:
        raise MeshError("nothing of the scan is visible from the front after cropping")
    return kept


def preprocess_mesh(vertices_model_frame, faces, n_surface=250_000, n_space=15_000, rng=None):
    """Crop, hidden-surface removal, Delaunay sheet, SDF samples (model frame, float32)."""
    rng = np.random.default_rng(0) if rng is None else rng
    v, f = visible_surface(vertices_model_frame, faces)
    sheet = delaunay_sheet(v)
    pts, fidx = _sample_triangles(v, f, n_surface, rng)
    tri = v[f[fidx]]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-30
    normals[normals[:, 2] < 0] *= -1  # visible surface faces the viewer (+z)
    space = uniform_ball(n_space, rng)
    sdf, grad = sheet_sdf(sheet, space)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return SDFSamples(
        f32(pts),
        f32(normals),
        f32(space),
        f32(sdf),
        f32(grad),
        f32(sheet.vertices),
        sheet.faces.astype(np.int32),
        f32(v),
        f.astype(np.int32),
    )
