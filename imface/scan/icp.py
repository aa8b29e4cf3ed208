"""Rigid and similarity registration of the template face to a scan: closed-form similarity
(Umeyama), linearised point-to-plane steps, trimmed two-way ICP, a robust polish that converges
to one fixed point, and a batched coarse ICP over many starting poses.

Matrices are 4x4 scan->model similarities; ``tmpl`` is a ``imface.scan.template.Template`` (points,
normals, a KD-tree and the region where it has surface).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from imface.units import NOSE_MODEL

# KD-tree queries on every core: the batched search over 1,200 starts is mostly queries (the
# answer is the same for any number of workers)
QUERY_WORKERS = -1


def apply_matrix(m, points):
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:3, :3].T + m[:3, 3]


def similarity_matrix(s, r, t):
    m = np.eye(4)
    m[:3, :3] = s * r
    m[:3, 3] = t
    return m


def similarity(src, dst, weights=None, scale=None):
    """Least-squares s, R, t with dst ~ s R src + t (Umeyama); `scale` fixes s when given."""
    w = np.ones(len(src)) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    a, b = src - mu_s, dst - mu_d
    cov = (b * w[:, None]).T @ a
    u, sig, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    fix = np.diag([1.0, 1.0, d])
    r = u @ fix @ vt
    if scale is None:
        var = (w * (a**2).sum(1)).sum()
        scale = float((sig * np.diag(fix)).sum() / max(var, 1e-30))
    return scale, r, mu_d - scale * r @ mu_s


def trimmed_icp(tree, scan_pts, tmpl, idx, m, iters, trim, scale_free, plane=False, upper=False, tol=0.0):
    """Trimmed ICP between the template face and the scan; returns the refined scan->model
    matrix, the trimmed RMS (model units), the fraction of template points matched within 5 mm,
    and the template-point distances.

    Matches go both ways: template -> scan (every template point has skin under it) and scan ->
    template for the scan points that fall inside the template's region (so the face cannot
    slide along itself); extra scan parts (back of the head, shoulders) stay outside the region
    and cost nothing. The worst `trim` fraction of each side is ignored (missing parts, an open
    mouth).
    """
    tp, tn = tmpl.points[idx], tmpl.normals[idx]
    sp = scan_pts[: 4 * len(idx)]
    for it in range(iters + 1):
        inv = np.linalg.inv(m)
        q = tp @ inv[:3, :3].T + inv[:3, 3]
        _, nn = tree.query(q, workers=QUERY_WORKERS)
        src = scan_pts[nn] @ m[:3, :3].T + m[:3, 3]  # matched scan points, model frame
        d = np.linalg.norm(src - tp, axis=1)
        keep = d <= trimmed_quantile(d, 1 - trim)
        if it == iters:
            break
        a, b, n = src[keep], tp[keep], tn[keep]
        spm = sp @ m[:3, :3].T + m[:3, 3]
        inside = tmpl.region(spm, upper)
        if inside.sum() > 20:
            d2, nn2 = tmpl.tree.query(spm[inside], workers=QUERY_WORKERS)
            k2 = d2 <= trimmed_quantile(d2, 1 - trim)
            a = np.vstack([a, spm[inside][k2]])
            b = np.vstack([b, tmpl.points[nn2[k2]]])
            n = np.vstack([n, tmpl.normals[nn2[k2]]])
        if plane:
            step = point_to_plane_step(a, b, n, scale_free)
            m = step @ m
            if np.abs(step - np.eye(4)).max() < tol:  # converged: one last evaluation
                iters = it + 1
        else:
            s, r, t = similarity(a, b, scale=None if scale_free else 1.0)
            m = similarity_matrix(s, r, t) @ m
    rms = float(np.sqrt(np.mean(d[keep] ** 2)))
    return m, rms, float(np.mean(d < 0.05)), d


def robust_polish(tree, scan_pts, tmpl, m, iterations=60, sigma=0.02, tol=1e-12):
    """Converge to one fixed point so that the answer does not depend on where the search
    started (the same scan in another pose or unit ends at the same placement, to float
    precision, and gives bit-identical fitting samples). A trimmed ICP never gets there: points
    entering and leaving its trimmed set make it cycle ~10 um around the optimum. Here every
    template point of the upper face counts with a smooth robust (Geman-McClure, `sigma`)
    weight of its point-to-plane residual; rigid steps."""
    tp, tn = tmpl.points[tmpl.upper], tmpl.normals[tmpl.upper]
    for _ in range(iterations):
        inv = np.linalg.inv(m)
        _, nn = tree.query(tp @ inv[:3, :3].T + inv[:3, 3], workers=QUERY_WORKERS)
        src = scan_pts[nn] @ m[:3, :3].T + m[:3, 3]  # matched scan points, model frame
        residual = ((src - tp) * tn).sum(1)
        weights = 1.0 / (1.0 + (residual / sigma) ** 2) ** 2
        step = point_to_plane_step(src, tp, tn, False, weights)
        m = step @ m
        if np.abs(step - np.eye(4)).max() < tol:
            break
    return m


def trimmed_quantile(d, q):
    k = int(q * (len(d) - 1))
    return np.partition(d, k)[k]


def point_to_plane_step(src, dst, normals, scale_free, weights=None):
    """One linearised point-to-plane step: small rotation w, translation, optional scale."""
    cols = [np.cross(src, normals), normals]
    if scale_free:
        cols.append((normals * src).sum(1, keepdims=True))
    a = np.hstack(cols)
    b = ((dst - src) * normals).sum(1)
    wa = a if weights is None else a * weights[:, None]
    x = np.linalg.lstsq(wa.T @ a + 1e-9 * np.eye(a.shape[1]), wa.T @ b, rcond=None)[0]
    r = Rotation.from_rotvec(x[:3]).as_matrix()
    s = 1.0 + (x[6] if scale_free else 0.0)
    return similarity_matrix(s, r, x[3:6])


_START_ROTATIONS = None


def start_rotations():
    """600 rotations spread over SO(3) (the icosahedral group plus seeded random ones): every
    pose is within ~25 degrees of one, inside ICP's basin of convergence on most faces (300
    missed it on some people of the wide population)."""
    global _START_ROTATIONS
    if _START_ROTATIONS is None:
        _START_ROTATIONS = np.concatenate(
            [
                Rotation.create_group("I").as_matrix(),
                Rotation.random(540, random_state=7).as_matrix(),
            ]
        )
    return _START_ROTATIONS


def principal_frame(c: np.ndarray) -> np.ndarray:
    """A rotation (rows: axes) fixed to the shape of centred points `c`: its principal axes, each
    pointing where the points are skewed. It turns with the scan, so starts taken relative to it
    are the same starts, relative to the face, in any pose."""
    _, axes = np.linalg.eigh(c.T @ c)
    axes = axes[:, ::-1].T  # largest variance first
    skew = np.sum((c @ axes.T) ** 3, axis=0)
    axes = axes * np.where(skew < 0, -1.0, 1.0)[:, None]
    if np.linalg.det(axes) < 0:
        axes[2] = -axes[2]
    return axes


def start_placements(pts, scale, tips=2):
    """Initial scan->model matrices: each rotation (taken relative to the scan's principal frame,
    so the same starts in any pose) with one of the scan's most forward bumps (3 cm apart; the
    nose tip should be one) on the template nose tip."""
    centroid = pts.mean(0)
    c = pts[:: max(1, len(pts) // 3000)] - centroid
    rots = start_rotations() @ principal_frame(c)
    z = c @ rots[:, 2, :].T  # (P, K) forward coordinate under each rotation
    order = np.argsort(-z, axis=0)[:300]
    out = []
    for k, r in enumerate(rots):
        chosen = []
        for i in order[:, k]:
            if all(np.linalg.norm(c[i] - c[j]) * scale > 0.3 for j in chosen):
                chosen.append(i)
                if len(chosen) == tips:
                    break
        out += [similarity_matrix(scale, r, NOSE_MODEL - scale * r @ (c[i] + centroid)) for i in chosen]
    return np.stack(out)


def batched_icp(tree, pts, tmpl, mats, iters=5, trim=0.3, n_probe=60, n_scan=120):
    """Point-to-plane ICP run on every start at once (batched numpy); returns refined matrices
    and a score per start (trimmed RMS minus a bonus for matched template points)."""
    k = len(mats)
    tp, tn = tmpl.points[tmpl.coarse[:n_probe]], tmpl.normals[tmpl.coarse[:n_probe]]
    sp = pts[:n_scan]
    eye = 1e-9 * np.eye(6)
    for it in range(iters + 1):
        inv = np.linalg.inv(mats)
        q = np.einsum("kij,pj->kpi", inv[:, :3, :3], tp) + inv[:, None, :3, 3]
        _, nn = tree.query(q.reshape(-1, 3), workers=QUERY_WORKERS)
        src = np.einsum("kij,kpj->kpi", mats[:, :3, :3], pts[nn].reshape(k, -1, 3))
        src += mats[:, None, :3, 3]
        d = np.linalg.norm(src - tp, axis=2)
        kth = int((1 - trim) * (n_probe - 1))
        thr = np.partition(d, kth, axis=1)[:, kth]
        w1 = d <= thr[:, None]
        if it == iters:
            break
        spm = np.einsum("kij,pj->kpi", mats[:, :3, :3], sp) + mats[:, None, :3, 3]
        inside = tmpl.region(spm.reshape(-1, 3)).reshape(k, -1)
        d2, nn2 = tmpl.tree.query(spm.reshape(-1, 3), workers=QUERY_WORKERS)
        d2, nn2 = d2.reshape(k, -1), nn2.reshape(k, -1)
        w2 = inside & (d2 <= thr[:, None])
        a = np.concatenate([src, spm], 1)
        b = np.concatenate([np.broadcast_to(tp, src.shape), tmpl.points[nn2]], 1)
        n = np.concatenate([np.broadcast_to(tn, src.shape), tmpl.normals[nn2]], 1)
        w = np.concatenate([w1, w2], 1).astype(float)
        jac = np.concatenate([np.cross(a, n), n], 2)
        res = ((b - a) * n).sum(2)
        weighted = jac * w[..., None]
        h = weighted.transpose(0, 2, 1) @ jac + eye  # matmul: 1.7x a 3-operand einsum
        g = (weighted * res[..., None]).sum(1)
        x = np.linalg.solve(h, g[..., None])[..., 0]
        delta = np.tile(np.eye(4), (k, 1, 1))
        delta[:, :3, :3] = Rotation.from_rotvec(x[:, :3]).as_matrix()
        delta[:, :3, 3] = x[:, 3:]
        mats = delta @ mats
    rms = np.sqrt((d**2 * w1).sum(1) / w1.sum(1))
    return mats, rms - 0.02 * (d < 0.05).mean(1)
