"""Cameras, rays, a mesh rasteriser and thin-shell volume rendering of an SDF (no Qt, CPU first).

Cameras follow the NeRF-synthetic convention: ``c2w`` is camera-to-world, the camera looks down its
-z axis with y up (OpenGL), ``focal = 0.5 * width / tan(0.5 * camera_angle_x)`` in pixels, pixel
centres at integer + 0.5, image rows going down. The scene lives in the model frame (1 unit =
100 mm, see ``imface.units``).

Where a ray meets the surface is found by rasterising a mesh of the SDF's zero level (fast and
exact up to the mesh resolution). The rendering itself is volumetric but only in a thin shell
around that hit: a few samples within +-``half_width`` of it, a NeuS-style opacity from the SDF
(logistic of sharpness * sdf), so gradients reach the colour network and the codes while each ray
costs only a handful of network evaluations. Rays just outside the silhouette also get a shell (from
the nearest hit pixel) so the silhouette can pull the surface; all other rays see the background.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# (points (N, 3)) -> (sdf (N,), coordinates the colour is a function of (N, 3))
SurfaceFn = Callable[[Tensor], tuple[Tensor, Tensor]]
# (coordinates (N, 3), unit view directions (N, 3)) -> sRGB in [0, 1] (N, 3)
ColourFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Camera:
    c2w: np.ndarray  # (4, 4) camera-to-world, OpenGL axes
    focal: float  # pixels
    width: int
    height: int

    @classmethod
    def from_fov(cls, c2w, camera_angle_x: float, width: int, height: int) -> Camera:
        focal = 0.5 * width / np.tan(0.5 * camera_angle_x)
        return cls(np.asarray(c2w, np.float64), float(focal), int(width), int(height))

    @property
    def camera_angle_x(self) -> float:
        return float(2.0 * np.arctan(0.5 * self.width / self.focal))

    @property
    def centre(self) -> np.ndarray:
        return self.c2w[:3, 3].copy()

    def resized(self, width: int, height: int | None = None) -> Camera:
        height = height or round(self.height * width / self.width)
        return Camera(self.c2w, self.focal * width / self.width, width, height)

    def directions(self) -> np.ndarray:
        """Unit world-space ray directions of every pixel, row-major (H * W, 3)."""
        cols, rows = np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)
        local = np.stack(
            [
                (cols - 0.5 * self.width) / self.focal,
                -(rows - 0.5 * self.height) / self.focal,
                -np.ones_like(cols),
            ],
            axis=-1,
        ).reshape(-1, 3)
        world = local @ self.c2w[:3, :3].T
        return world / np.linalg.norm(world, axis=1, keepdims=True)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (N, 2) as (column, row) and depth in front of the camera (N,)."""
        local = (np.asarray(points, np.float64) - self.c2w[:3, 3]) @ self.c2w[:3, :3]
        depth = -local[:, 2]
        safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
        cols = 0.5 * self.width + self.focal * local[:, 0] / safe
        rows = 0.5 * self.height - self.focal * local[:, 1] / safe
        return np.stack([cols, rows], axis=1), depth


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """camera-to-world of a camera at `eye` looking at `target` (OpenGL: -z forward, y up)."""
    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(back, right), back, eye
    return c2w


def orbit(azimuths_deg, elevations_deg, distance: float, target=(0.0, 0.0, 0.0)) -> list[np.ndarray]:
    """Cameras around the face (which looks along +z): azimuth about y, elevation up."""
    out = []
    for az, el in zip(azimuths_deg, elevations_deg, strict=True):
        a, e = np.radians(az), np.radians(el)
        offset = distance * np.array([np.sin(a) * np.cos(e), np.sin(e), np.cos(a) * np.cos(e)])
        out.append(look_at(np.asarray(target) + offset, target))
    return out


# -- rasteriser ----------------------------------------------------------------------------------
@dataclass
class Hits:
    """First intersection of every pixel's ray with a mesh (row-major pixels)."""

    t: np.ndarray  # (P,) distance along the unit ray; inf where the ray misses
    triangle: np.ndarray  # (P,) index of the hit triangle, -1 where it misses
    bary: np.ndarray  # (P, 3) barycentric weights of the triangle's vertices

    @property
    def hit(self) -> np.ndarray:
        return self.triangle >= 0


_PAIRS_PER_CHUNK = 1_000_000


def rasterise(vertices: np.ndarray, faces: np.ndarray, camera: Camera, cull_back: bool = False) -> Hits:
    """Exact ray-triangle tests for every (triangle, pixel of its screen box) pair, grouped by box
    size so that the work stays vectorised; the nearest hit per pixel wins. cull_back drops the
    triangles whose (counter-clockwise) normal faces away from the camera."""
    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces, np.int64)
    w, h = camera.width, camera.height
    best_t = np.full(w * h, np.inf)
    best_tri = np.full(w * h, -1, np.int64)
    best_uv = np.zeros((w * h, 2))
    if len(faces):
        uv, depth = camera.project(vertices)
        front = (depth[faces] > 1e-6).all(1)
        if cull_back:
            v0 = vertices[faces[:, 0]]
            normal = np.cross(vertices[faces[:, 1]] - v0, vertices[faces[:, 2]] - v0)
            front &= ((camera.centre - v0) * normal).sum(1) > 0
        tri_uv = uv[faces]  # (F, 3, 2)
        lo = np.ceil(tri_uv.min(1) - 0.5).astype(np.int64)
        hi = np.floor(tri_uv.max(1) - 0.5).astype(np.int64)
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, [w - 1, h - 1])
        size = (hi - lo + 1).max(1)
        keep = np.nonzero(front & (hi >= lo).all(1))[0]
        for tri, px, py in _candidate_pairs(keep, lo, hi, size):
            _test_pairs(vertices, faces, camera, tri, px, py, best_t, best_tri, best_uv)
    bary = np.column_stack([1.0 - best_uv.sum(1), best_uv[:, 0], best_uv[:, 1]])
    return Hits(best_t, best_tri, bary)


def _candidate_pairs(triangles, lo, hi, size):
    """(triangle, column, row) pairs inside each triangle's pixel box, in bounded chunks."""
    bucket = np.ceil(np.log2(np.maximum(size[triangles], 1))).astype(np.int64)
    for b in np.unique(bucket):
        k = 2**b
        group = triangles[bucket == b]
        oy, ox = np.divmod(np.arange(k * k), k)
        per_chunk = max(1, _PAIRS_PER_CHUNK // (k * k))
        for start in range(0, len(group), per_chunk):
            tri = group[start : start + per_chunk]
            px = lo[tri, 0][:, None] + ox[None]
            py = lo[tri, 1][:, None] + oy[None]
            inside = (px <= hi[tri, 0][:, None]) & (py <= hi[tri, 1][:, None])
            yield np.broadcast_to(tri[:, None], px.shape)[inside], px[inside], py[inside]


def _test_pairs(vertices, faces, camera, tri, px, py, best_t, best_tri, best_uv) -> None:
    """Moller-Trumbore on the pairs; keeps the nearest hit per pixel in the best_* arrays."""
    local = np.stack(
        [(px + 0.5 - 0.5 * camera.width) / camera.focal, -(py + 0.5 - 0.5 * camera.height) / camera.focal],
        axis=1,
    )
    d = np.column_stack([local, -np.ones(len(px))]) @ camera.c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    v0, v1, v2 = (vertices[faces[tri, i]] for i in range(3))
    e1, e2 = v1 - v0, v2 - v0
    p = np.cross(d, e2)
    det = (e1 * p).sum(1)
    ok = np.abs(det) > 1e-14
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = camera.c2w[:3, 3] - v0
    u = (s * p).sum(1) * inv
    q = np.cross(s, e1)
    v = (d * q).sum(1) * inv
    t = (e2 * q).sum(1) * inv
    tol = 1e-7  # closes hairline cracks between neighbouring triangles
    good = ok & (u >= -tol) & (v >= -tol) & (u + v <= 1 + tol) & (t > 0)
    if not good.any():
        return
    pix = (py * camera.width + px)[good]
    t, tri, uv = t[good], tri[good], np.column_stack([u, v])[good]
    order = np.lexsort((t, pix))
    first = order[np.r_[True, pix[order][1:] != pix[order][:-1]]]
    pix, t, tri, uv = pix[first], t[first], tri[first], uv[first]
    closer = t < best_t[pix]
    pix = pix[closer]
    best_t[pix], best_tri[pix], best_uv[pix] = t[closer], tri[closer], uv[closer]


# -- shell rendering -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Shell:
    """Where and how densely a ray is sampled around its surface hit (model units)."""

    samples: int = 8
    half_width: float = 0.04  # 4 mm on either side of the mesh hit
    # opacity = logistic(-sharpness * sdf): a 0.25 mm soft edge; a sharp edge keeps grazing rays
    # (whose SDF changes slowly along the shell) nearly opaque
    sharpness: float = 400.0
    band_px: int = 3  # rays this close to the silhouette get a shell too (silhouette gradient)


def shell_centres(hits: Hits, camera: Camera, band_px: int) -> np.ndarray:
    """Per pixel, the ray distance to centre its shell on: the hit, the nearest hit pixel's for
    pixels within band_px of the silhouette, NaN for the rest (pure background)."""
    from scipy.ndimage import distance_transform_edt

    hit = hits.hit.reshape(camera.height, camera.width)
    centre = np.where(hits.hit, hits.t, np.nan)
    if not hit.any() or band_px <= 0:
        return centre
    distance, (rows, cols) = distance_transform_edt(~hit, return_indices=True)
    nearest = (rows * camera.width + cols).reshape(-1)
    band = (distance.reshape(-1) > 0) & (distance.reshape(-1) <= band_px)
    centre[band] = hits.t[nearest[band]]
    return centre


def shell_distances(centre: Tensor, shell: Shell, jitter: bool = False) -> Tensor:
    """(R,) shell centres -> (R, S) sorted sample distances; jitter shifts them within a step."""
    steps = torch.linspace(-1.0, 1.0, shell.samples, device=centre.device)
    t = centre[:, None] + shell.half_width * steps[None]
    if jitter:
        step = 2 * shell.half_width / max(shell.samples - 1, 1)
        t = t + (torch.rand(centre.shape[0], 1, device=centre.device) - 0.5) * step
    return t


def composite(sdf: Tensor, rgb: Tensor, sharpness: float, background: Tensor):
    """NeuS discrete opacity over the S - 1 intervals of each ray. sdf (R, S), rgb (R, S, 3);
    returns colour (R, 3) over the background, opacity (R,) and the interval weights (R, S)."""
    cdf = torch.sigmoid(sharpness * sdf)
    alpha = ((cdf[:, :-1] - cdf[:, 1:]) / cdf[:, :-1].clamp_min(1e-6)).clamp(0.0, 1.0)
    transmit = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1] + 1e-7], 1), 1)
    # a ray whose shell ends inside the solid is absorbed there (grazing rays cross the shell
    # at a shallow SDF slope and would otherwise let the background through)
    alpha = torch.cat([alpha, torch.sigmoid(-sharpness * sdf[:, -1:])], 1)
    transmit = torch.cat([transmit, transmit[:, -1:] * (1 - alpha[:, -2:-1] + 1e-7)], 1)
    weight = alpha * transmit
    colour = torch.cat([0.5 * (rgb[:, :-1] + rgb[:, 1:]), rgb[:, -1:]], 1)
    opacity = weight.sum(1)
    out = (weight[..., None] * colour).sum(1) + (1 - opacity)[:, None] * background
    return out, opacity, weight


def render_rays(
    surface: SurfaceFn,
    colour: ColourFn,
    origins: Tensor,
    directions: Tensor,
    centres: Tensor,
    shell: Shell,
    background: Tensor,
    jitter: bool = False,
    with_depth: bool = False,
):
    """Colour and opacity of rays that all have a shell (finite centres); with_depth adds the
    expected distance of the surface along each ray."""
    t = shell_distances(centres, shell, jitter)
    points = origins[:, None] + t[..., None] * directions[:, None]
    n, s = t.shape
    sdf, coords = surface(points.reshape(-1, 3))
    view = directions[:, None].expand(n, s, 3).reshape(-1, 3)
    rgb = colour(coords, view).reshape(n, s, 3)
    out, opacity, weight = composite(sdf.reshape(n, s), rgb, shell.sharpness, background)
    if not with_depth:
        return out, opacity
    middle = torch.cat([0.5 * (t[:, :-1] + t[:, 1:]), t[:, -1:]], 1)
    return out, opacity, (weight * middle).sum(1) / opacity.clamp_min(1e-6)


def render_image(
    surface: SurfaceFn,
    colour: ColourFn,
    camera: Camera,
    centres: np.ndarray,
    shell: Shell,
    background=(1.0, 1.0, 1.0),
    chunk: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """A whole image (H, W, 3) in [0, 1] and its opacity (H, W), without gradients."""
    bg = torch.tensor(background, dtype=torch.float32)
    image = np.tile(np.asarray(background, np.float32), (camera.width * camera.height, 1))
    alpha = np.zeros(camera.width * camera.height, np.float32)
    rays = np.nonzero(np.isfinite(centres))[0]
    directions = torch.from_numpy(camera.directions()[rays].astype(np.float32))
    origin = torch.from_numpy(camera.centre.astype(np.float32))
    centre = torch.from_numpy(centres[rays].astype(np.float32))
    with torch.no_grad():
        for start in range(0, len(rays), chunk):
            sl = slice(start, start + chunk)
            d = directions[sl]
            rgb, opacity = render_rays(surface, colour, origin.expand_as(d), d, centre[sl], shell, bg)
            image[rays[sl]] = rgb.numpy()
            alpha[rays[sl]] = opacity.numpy()
    h, w = camera.height, camera.width
    return image.reshape(h, w, 3), alpha.reshape(h, w)


def refine_hits(sdf_fn: Callable[[Tensor], Tensor], origin, directions, t, iterations: int = 4):
    """Sphere-tracing steps from a mesh hit onto the SDF's zero level (t along unit rays)."""
    o = torch.as_tensor(np.asarray(origin, np.float32))
    d = torch.as_tensor(np.asarray(directions, np.float32))
    t = torch.as_tensor(np.asarray(t, np.float32)).clone()
    with torch.no_grad():
        for _ in range(iterations):
            t = t + sdf_fn(o + t[:, None] * d)
    return t.numpy()
