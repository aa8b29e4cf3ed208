"""Fixed-topology morphing: move the vertices of one extracted mesh onto the surface of new codes.

ImFace maps an observed point p to canonical p' = E(p) and template p'' = I(p'). A vertex keeps
its template point q (computed once for the base mesh); for new codes we solve W_new(p) = q per
vertex with Broyden's method on the 3x3 Jacobian (exact Jacobian only at the start), warm-started
from the previous frame, then take one Newton step onto f = 0 (f changes with z_id through the
SDF correction delta). When only z_exp changed since the canonical targets were taken, solving
E_new(p) = E_base(p_base) is enough and exact: I and delta see the same canonical point, so f stays
0 and the (costlier) identity warp is never evaluated.

Everything is batched over all vertices; only unconverged vertices are re-evaluated. Vertices
that do not converge are reported and the caller re-extracts (topology change, fold).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from imface.extract.grid import Mesh
from imface.model.imface import Codes, ImFace, PreparedCodes

WarpFn = Callable[[Tensor], tuple[Tensor, Tensor | None]]  # x (N,3) -> (warped (N,3), delta (N,)|None)


@dataclass
class MorphResult:
    vertices: np.ndarray  # (V, 3) float32, model frame
    converged: np.ndarray  # (V,) bool
    failed: int  # number of vertices that did not converge
    max_sdf: float  # max |f| at converged vertices (first-order estimate unless `checked`)
    ms: float  # wall time of the call
    iterations: int = 0  # warp evaluations spent
    checked: bool = False  # max_sdf measured with a full SDF evaluation
    preview: bool = False  # one unverified quasi-Newton step (see MorphEngine.morph)


def _batched(fn: WarpFn, x: Tensor, chunk: int) -> tuple[Tensor, Tensor | None]:
    outs, deltas = [], []
    for start in range(0, x.shape[0], chunk):
        w, d = fn(x[start : start + chunk])
        outs.append(w)
        deltas.append(d)
    delta = None if deltas[0] is None else torch.cat(deltas)
    return torch.cat(outs), delta


def warp_jacobian(fn: WarpFn, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-point 3x3 Jacobians of a pointwise warp: one forward and three backward passes
    (each output of a point depends on that point only, so a summed gradient is per point)."""
    with torch.enable_grad():
        probe = x.detach().requires_grad_(True)
        warped, delta = fn(probe)
        rows = [torch.autograd.grad(warped[:, k].sum(), probe, retain_graph=k < 2)[0] for k in range(3)]
    jac = torch.stack(rows, dim=1)  # (N, 3, 3): jac[n, k, :] = d warped_k / d x
    return jac, warped.detach(), None if delta is None else delta.detach()


class MorphEngine:
    """Keeps one mesh topology and follows the codes.

    base_codes=None means `base_mesh` lies in template space (e.g. from `export-topology`): its
    vertices are their own template points.
    """

    def __init__(
        self,
        model: ImFace,
        base_mesh: Mesh,
        base_codes: Codes | None,
        *,
        tol: float = 1e-4,
        max_iterations: int = 8,
        max_step: float = 0.05,
        chunk: int = 65536,
        check: bool = False,
        preview_radius: float = 0.03,
    ):
        self.model = model
        self.tol = tol  # |W(p) - target| in model units (1e-4 = 0.01 mm)
        self.max_iterations = max_iterations
        self.max_step = max_step  # per-iteration move cap (model units), guards against wild steps
        self.chunk = chunk
        self.check = check  # measure |f| with a full SDF pass after each morph (costs one query)
        # preview ticks trust the linear model this far (3 mm): a tick that coalesced a large code
        # step (a principal identity direction moves the face ~7 mm per std) would otherwise
        # send almost every vertex to the re-projection (~240 ms instead of ~25 ms a frame at
        # 15 k vertices), and a slow tick coalesces a larger step still; at the small steps of a
        # fluent drag the preview's error is the same as with 1 mm (median 0.2 mm)
        self.preview_radius = preview_radius
        self.reset(base_mesh, base_codes)

    @property
    def device(self) -> torch.device:
        return self.model.template_landmarks.device

    @property
    def last_prepared(self) -> PreparedCodes | None:
        """The prepared codes of the last `morph` (reuse them for a check or a repair)."""
        return self._last_prep

    # -- warps ------------------------------------------------------------------------------
    def _expression(self, prep: PreparedCodes) -> WarpFn:
        return lambda x: (self.model.expression_warp(x[None], prep)[0], None)

    def _full(self, prep: PreparedCodes) -> WarpFn:
        def warp(x: Tensor):
            template, delta = self.model.identity_warp(self.model.expression_warp(x[None], prep), prep)
            return template[0], delta[0]

        return warp

    # -- state ------------------------------------------------------------------------------
    def reset(self, mesh: Mesh, codes: Codes | None) -> None:
        """Take a new base mesh (and the codes it was extracted for)."""
        self.faces = mesh.faces
        p0 = torch.from_numpy(np.asarray(mesh.vertices, dtype=np.float32)).to(self.device)
        with torch.no_grad():
            if codes is None:
                self._canonical_codes = None
                self._canonical = None
                self._template = p0.clone()
            else:
                codes = self._on_device(codes)
                prep = self.model.prepare(codes)
                self._canonical, _ = _batched(self._expression(prep), p0, self.chunk)
                self._template, _ = _batched(self._full(prep), p0, self.chunk)
                self._canonical_codes = codes
        self._template_sdf, self._template_grad = self._template_field(self._template)
        self._p = p0.clone()  # warp solution of the last frame (warm start)
        self._jinv: dict[str, Tensor | None] = {"expression": None, "full": None}
        self._last_prep: PreparedCodes | None = None
        self._last_x = p0.clone()

    def _on_device(self, codes: Codes) -> Codes:
        dev = self.device
        detail = None if codes.z_detail is None else codes.z_detail.to(dev)
        return Codes(codes.z_id.to(dev), codes.z_exp.to(dev), codes.neutral.to(dev), detail)

    def _template_field(self, q: Tensor) -> tuple[Tensor, Tensor]:
        """T(q) and its gradient at the template points (fixed for the engine's lifetime)."""
        values, grads = [], []
        for start in range(0, q.shape[0], self.chunk):
            with torch.enable_grad():
                x = q[start : start + self.chunk].detach().requires_grad_(True)
                s = self.model.template_sdf(x[None])[0]
                (g,) = torch.autograd.grad(s.sum(), x)
            values.append(s.detach())
            grads.append(g)
        return torch.cat(values), torch.cat(grads)

    def _same_identity(self, codes: Codes) -> bool:
        ref = self._canonical_codes
        return (
            ref is not None
            and torch.equal(ref.z_id, codes.z_id)
            and (ref.z_detail is None) == (codes.z_detail is None)
        )

    # -- morph ------------------------------------------------------------------------------
    def morph(self, codes: Codes, preview: bool = False) -> MorphResult:
        """Move the vertices to the surface of `codes`.

        preview=True: one warp evaluation and one quasi-Newton step, unverified (for slider
        drags: the error is second order in the code step and the next tick starts from it);
        `converged` then marks vertices whose start residual was within `preview_radius`.
        """
        t0 = time.perf_counter()
        codes = self._on_device(codes)
        with torch.no_grad():
            prep = self.model.prepare(codes)
            if not self._same_identity(codes) and self._last_identity_matches(codes):
                self._retarget_canonical()
            if self._same_identity(codes):
                mode, fn, target = "expression", self._expression(prep), self._canonical
            else:
                mode, fn, target = "full", self._full(prep), self._template
            solve = self._preview_step if preview else self._solve
            x, r, delta, jinv, evals = solve(fn, target, self._p.clone(), self._jinv[mode])
        converged = r.norm(dim=-1) <= self.tol
        self._p = torch.where(converged[:, None], x, self._p)
        self._jinv = {"expression": None, "full": None, mode: jinv}
        self._last_prep = prep
        if mode == "full":
            x, f_est = self._project(x, r, delta, jinv)
        else:
            f_est = torch.zeros_like(r[:, 0])
        result = self._result(x, converged, f_est, prep, evals, t0)
        result.preview = preview
        self._last_x = x
        return result

    def _last_identity_matches(self, codes: Codes) -> bool:
        last = self._last_prep
        return last is not None and torch.equal(last.codes.z_id, codes.z_id)

    def _retarget_canonical(self) -> None:
        """The identity moved in a previous frame and now stays: take canonical targets from that
        frame's surface (one expression-warp pass) so expression edits go back to the fast path."""
        prep = self._last_prep
        self._canonical, _ = _batched(self._expression(prep), self._last_x, self.chunk)
        self._template, _ = _batched(self._full(prep), self._last_x, self.chunk)
        self._template_sdf, self._template_grad = self._template_field(self._template)
        self._p = self._last_x.clone()
        self._canonical_codes = prep.codes

    def _start(self, fn: WarpFn, target: Tensor, x: Tensor, jinv: Tensor | None):
        """Residual at the warm start; the exact Jacobian only when no estimate is carried over."""
        if jinv is None or jinv.shape[0] != x.shape[0]:
            jac, w, delta = warp_jacobian(fn, x)
            jinv = _safe_inverse(jac)
        else:
            w, delta = _batched(fn, x, self.chunk)
        return w - target, delta, jinv

    def _step(self, jinv: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        """Quasi-Newton step, its length capped at max_step; also says which steps were capped."""
        dx = -(jinv @ r[..., None])[..., 0]
        length = dx.norm(dim=-1, keepdim=True)
        return dx * (self.max_step / length.clamp_min(self.max_step)), length[:, 0] > self.max_step

    def _preview_step(self, fn: WarpFn, target: Tensor, x: Tensor, jinv: Tensor | None):
        r, delta, jinv = self._start(fn, target, x, jinv)
        dx, capped = self._step(jinv, r)
        trusted = (r.norm(dim=-1) <= self.preview_radius) & ~capped
        # Linear model: an uncapped step zeroes the residual; untrusted vertices keep theirs.
        r_after = torch.where(trusted[:, None], torch.zeros_like(r), r)
        return x + dx, r_after, delta, jinv, 1

    def _solve(self, fn: WarpFn, target: Tensor, x: Tensor, jinv: Tensor | None):
        """Broyden ('good' update of the inverse Jacobian) on every unconverged vertex at once."""
        evals = 1
        r, delta, jinv = self._start(fn, target, x, jinv)
        for _ in range(self.max_iterations):
            active = torch.nonzero(r.norm(dim=-1) > self.tol).flatten()
            if active.numel() == 0:
                break
            ja, ra = jinv[active], r[active]
            dx, _ = self._step(ja, ra)
            xn = x[active] + dx
            wn, dn = _batched(fn, xn, self.chunk)
            evals += 1
            rn = wn - target[active]
            jinv[active] = _broyden_update(ja, dx, rn - ra)
            x[active], r[active] = xn, rn
            if delta is not None:
                delta[active] = dn
        return x, r, delta, jinv, evals

    def _project(self, x: Tensor, r: Tensor, delta: Tensor, jinv: Tensor) -> tuple[Tensor, Tensor]:
        """One Newton step onto f = 0 without another network pass:
        f(x) ~ T(q) + grad T(q) . (W(x) - q) + delta(x), grad f ~ J^T grad T(q)."""
        f = self._template_sdf + (self._template_grad * r).sum(-1) + delta
        grad = torch.linalg.solve(jinv.transpose(1, 2), self._template_grad[..., None])[..., 0]
        step = f[:, None] * grad / (grad * grad).sum(-1, keepdim=True).clamp_min(1e-12)
        return x - step, f

    def _result(self, x, converged, f_est, prep, evals, t0) -> MorphResult:
        max_sdf = float(f_est[converged].abs().max()) if bool(converged.any()) else float("nan")
        checked = False
        if self.check:
            sdf = self.model.sdf(x, prep, chunk=self.chunk)
            max_sdf = float(sdf[converged].abs().max()) if bool(converged.any()) else float("nan")
            checked = True
        conv = converged.cpu().numpy()
        return MorphResult(
            vertices=x.detach().cpu().numpy().astype(np.float32),
            converged=conv,
            failed=int((~conv).sum()),
            max_sdf=max_sdf,
            ms=(time.perf_counter() - t0) * 1e3,
            iterations=evals,
            checked=checked,
        )

    def mesh(self, result: MorphResult) -> Mesh:
        return Mesh(result.vertices, self.faces)


def _safe_inverse(jac: Tensor) -> Tensor:
    """Inverse Jacobians; singular ones (folds) get the identity so Broyden can still try."""
    det = torch.linalg.det(jac)
    eye = torch.eye(3, dtype=jac.dtype, device=jac.device).expand_as(jac)
    ok = det.abs() > 1e-6
    safe = torch.where(ok[:, None, None], jac, eye)
    return torch.linalg.inv(safe)


def _broyden_update(jinv: Tensor, dx: Tensor, df: Tensor) -> Tensor:
    """Sherman-Morrison form of Broyden's good update: H += (dx - H df) dx^T H / (dx^T H df)."""
    h_df = (jinv @ df[..., None])[..., 0]
    dx_h = (dx[:, None, :] @ jinv)[:, 0, :]
    denom = (dx * h_df).sum(-1, keepdim=True)
    ok = denom.abs() > 1e-12
    update = (dx - h_df)[..., None] * dx_h[:, None, :] / torch.where(ok, denom, 1.0)[..., None]
    return jinv + torch.where(ok[..., None], update, 0.0)
