"""The projection baseline: training images projected onto the fitted mesh as vertex colours.

Each vertex takes the cosine-weighted mean of the pixels it projects to in the training views
where it is visible (its distance from the camera within ``tolerance`` of the rasterised depth
at its pixel, facing the camera, inside the silhouette when the images have alpha); vertices no
view sees copy their nearest seen neighbour. New views rasterise the mesh and interpolate the
vertex colours barycentrically. For another expression the colours move by template
coordinates: each vertex of the new mesh takes the colour of the base vertex nearest to it in
template space (the same correspondence the radiance field relies on).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from imface.appearance.render import Camera, rasterise
from imface.extract.repair import vertex_normals


def project_colours(mesh, views, tolerance: float = 0.01) -> np.ndarray:
    """Vertex colours (V, 3) of `mesh` from a ViewSet (tolerance in model units: 1 mm)."""
    vertices = np.asarray(mesh.vertices, np.float64)
    normals = vertex_normals(mesh.vertices, mesh.faces).astype(np.float64)
    total = np.zeros((len(vertices), 3))
    weight = np.zeros(len(vertices))
    for i, cam in enumerate(views.cameras):
        hits = rasterise(vertices, mesh.faces, cam, cull_back=True)
        uv, _ = cam.project(vertices)
        col, row = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
        inside = (col >= 0) & (col < cam.width) & (row >= 0) & (row < cam.height)
        pixel = np.where(inside, row * cam.width + col, 0)
        to_camera = cam.centre - vertices
        distance = np.linalg.norm(to_camera, axis=1)
        facing = (normals * to_camera).sum(1) / np.maximum(distance, 1e-12)
        visible = inside & (facing > 0.1) & (np.abs(hits.t[pixel] - distance) < tolerance)
        if views.alpha is not None:
            visible &= views.alpha[i].reshape(-1)[pixel] > 0.5
        rgb = _bilinear(views.images[i], uv[visible])
        total[visible] += facing[visible, None] * rgb
        weight[visible] += facing[visible]
    seen = weight > 0
    colours = total / np.maximum(weight, 1e-12)[:, None]
    if seen.any() and not seen.all():
        _, nearest = cKDTree(vertices[seen]).query(vertices[~seen])
        colours[~seen] = colours[seen][nearest]
    return colours


def _bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    x = np.clip(uv[:, 0] - 0.5, 0, w - 1)
    y = np.clip(uv[:, 1] - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def render_vertex_colours(mesh, colours: np.ndarray, camera: Camera, background=(1.0, 1.0, 1.0)):
    """Image (H, W, 3) and silhouette (H, W) of a vertex-coloured mesh."""
    hits = rasterise(mesh.vertices, mesh.faces, camera, cull_back=True)
    image = np.tile(np.asarray(background, np.float64), (camera.width * camera.height, 1))
    hit = hits.hit
    corners = colours[mesh.faces[hits.triangle[hit]]]  # (P, 3 vertices, 3 channels)
    image[hit] = (hits.bary[hit, :, None] * corners).sum(1)
    shape = (camera.height, camera.width)
    return image.reshape(*shape, 3), hit.reshape(shape).astype(np.float64)


def transfer_by_template(
    template_from: np.ndarray, colours: np.ndarray, template_to: np.ndarray
) -> np.ndarray:
    """Colours of another mesh of the same person: nearest vertex in template space."""
    _, nearest = cKDTree(np.asarray(template_from)).query(np.asarray(template_to))
    return colours[nearest]
