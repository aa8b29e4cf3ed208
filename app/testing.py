"""A test double for the model: an analytic face-like height field whose shape follows the codes.

Only tests (and the Xvfb smoke test) use it, to exercise the editor's plumbing fast and without a
trained network; the editor itself never shows it.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from app.backend import CodeSpace, FaceCodes, FaceModel, FitOutcome, MeshData, residual_mm

N = 48


def _grid():
    u = np.linspace(-0.8, 0.8, N, dtype=np.float32)
    x, y = np.meshgrid(u, u)
    faces = []
    for i in range(N - 1):
        for j in range(N - 1):
            a = i * N + j
            faces += [(a, a + 1, a + N), (a + 1, a + N + 1, a + N)]
    return x.ravel(), y.ravel(), np.array(faces, np.int64)


class FakeFaceNet:
    def __init__(self, dim: int = 6, fit_steps: int = 40, fit_sleep: float = 0.01, fail_fit: bool = False):
        self.config = SimpleNamespace(id_dim=dim, exp_dim=dim, detail=False)
        self.fit_steps, self.fit_sleep, self.fail_fit = fit_steps, fit_sleep, fail_fit
        self.x, self.y, self.faces = _grid()
        self.calls = {"extract": 0, "morph": 0}

    def heights(self, codes: FaceCodes) -> np.ndarray:
        x, y = self.x, self.y
        zi, ze = codes.z_id, codes.z_exp * (0 if codes.neutral else 1)
        width = 1 + 3 * zi[0]
        z = 0.4 * np.exp(-(x**2) * width - y**2 * (1 + 3 * zi[1]))  # face dome, nose at (0,0,0.4)
        z += 0.08 * np.exp(-((y + 0.4) ** 2 + x**2) / 0.05) * (1 + 5 * ze[0])  # chin / mouth
        z += 0.05 * np.exp(-(x**2 + y**2) / 0.01)  # nose
        return z.astype(np.float32)

    def backend_extract(self, codes, resolution):
        self.calls["extract"] += 1
        return MeshData(np.stack([self.x, self.y, self.heights(codes)], 1), self.faces)

    def backend_morph(self, base, codes):
        self.calls["morph"] += 1
        return np.stack([self.x, self.y, self.heights(codes)], 1).astype(np.float32)

    def backend_template(self, codes, vertices):
        v = np.asarray(vertices, np.float32)
        return np.stack([v[:, 0], v[:, 1], np.zeros(len(v), np.float32)], 1)

    def backend_fit(self, scan, progress, cancel):
        codes = FaceCodes(np.zeros(self.config.id_dim, np.float32), np.zeros(self.config.exp_dim, np.float32))
        target = scan.mesh.vertices
        for it in range(self.fit_steps):
            if cancel.is_set():
                raise RuntimeError("cancelled")
            time.sleep(self.fit_sleep)
            codes.z_id[0] = 0.1 * (it + 1) / self.fit_steps
            mesh = None
            if it % 10 == 9:
                mesh = self.backend_extract(codes, 0)
                mesh = MeshData(
                    mesh.vertices * scan.unit_scale if hasattr(scan, "unit_scale") else mesh.vertices,
                    mesh.faces,
                )
            progress(it + 1, 1.0 / (it + 1), mesh)
        if self.fail_fit:
            raise RuntimeError("the optimisation diverged")
        mesh = self.backend_extract(codes, 0)
        return FitOutcome(
            codes, mesh, residual_mm(target, mesh.vertices, scan.unit_mm), {"iterations": self.fit_steps}
        )


def fake_face_model(**kw) -> FaceModel:
    net = FakeFaceNet(**kw)
    d = net.config.id_dim
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    exp = {
        "2_smile": np.full(d, 0.05, np.float32),
        "3_mouth_stretch": np.full(d, -0.05, np.float32),
        "1_neutral": np.zeros(d, np.float32),
    }
    return FaceModel(
        model=net,
        path=Path("analytic test double"),
        sha256="fake-sha",
        trained=True,
        id_space=CodeSpace.from_stats(np.zeros(d), np.full(d, 0.05), basis.T.astype(np.float32)),
        exp_space=CodeSpace.from_stats(np.zeros(d), np.full(d, 0.05), np.eye(d)),
        expression_codes=exp,
    )


def synthetic_scan(path, scale_mm: float = 100.0, seed: int = 0):
    """Write a face-like scan (OBJ) for drop tests."""
    import trimesh

    net = FakeFaceNet()
    rng = np.random.default_rng(seed)
    codes = FaceCodes(np.full(6, 0.05, np.float32), np.zeros(6, np.float32), neutral=True)
    v = np.stack([net.x, net.y, net.heights(codes)], 1) + rng.normal(0, 0.002, (len(net.x), 3))
    trimesh.Trimesh(v * scale_mm / 100.0, net.faces, process=False).export(path)
    return path
