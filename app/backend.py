"""The editor's only door into ``imface``: loads a model and exposes what the UI needs.

Every ``imface`` module the editor uses is imported lazily and guarded: when a piece is missing from
this build the corresponding action raises :class:`Unavailable` with one clear line that the UI
shows ("... is not available in this build"), never a fake result. Geometry and learning live in
``imface``; the small exceptions kept here are listed in :data:`LOCAL_FALLBACKS` (and in the README).

Workers call these functions off the GUI thread; they take and return numpy arrays.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imface.errors import CheckpointError, MeshError, UserError
from imface.io import DEFAULT_CHECKPOINT  # noqa: F401  (re-exported for the window)
from imface.units import MM_PER_UNIT as MODEL_UNIT_MM

FACESCAPE_EXPRESSIONS = (
    "1_neutral", "2_smile", "3_mouth_stretch", "4_anger", "5_jaw_left", "6_jaw_right",
    "7_jaw_forward", "8_mouth_left", "9_mouth_right", "10_dimpler", "11_chin_raiser",
    "12_lip_puckerer", "13_lip_funneler", "14_sadness", "15_lip_roll", "16_grin",
    "17_cheek_blowing", "18_eye_closed", "19_brow_raiser", "20_brow_lower",
)  # fmt: skip

# What the editor does itself because it is UI-level (or until the imface piece lands).
LOCAL_FALLBACKS = {
    "scan loading": "trimesh.load when imface.scan.load is missing (display only)",
    "texture colours": (
        "colours from template coordinates (app/backend.texture_colors) when imface.correspond is missing"
    ),
    "mesh export": "trimesh export when imface.io has no export function",
    "residual heat map": "nearest-vertex distances (scipy cKDTree) when the fit report has none",
}


class Unavailable(UserError):
    """A feature whose imface piece is not in this build."""


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def feature_status() -> dict[str, bool]:
    """Which imface pieces this build has (shown in Help > About and used by the panels)."""
    names = {
        "checkpoints (imface.io)": ("imface.io", "load_checkpoint"),
        "mesh extraction (imface.extract)": ("imface.extract", "extract_dense"),
        "live morphing (imface.extract.MorphEngine)": ("imface.extract", "MorphEngine"),
        "fitting (imface.fit.codes)": ("imface.fit.codes", "fit_scan"),
        "scan loading (imface.scan.load)": ("imface.scan.load", "load_scan"),
        "alignment (imface.scan.align)": ("imface.scan.align", "align_from_landmarks"),
        "correspondence (imface.correspond)": ("imface.correspond", None),
        "generation / rig (imface.generate)": ("imface.generate", None),
        "training (imface.train.trainer)": ("imface.train.trainer", None),
    }
    out = {}
    for label, (module, attr) in names.items():
        mod = _optional(module)
        out[label] = mod is not None and (attr is None or hasattr(mod, attr))
    return out


def _need(module: str, attr: str, what: str):
    mod = _optional(module)
    if mod is None or not hasattr(mod, attr):
        raise Unavailable(f"{what} is not available in this build ({module}.{attr} is missing)")
    return getattr(mod, attr)


# --------------------------------------------------------------------------------------------
# Plain data passed between threads
# --------------------------------------------------------------------------------------------
@dataclass
class MeshData:
    """A triangle mesh in the model frame (or a scan in its own frame): numpy only."""

    vertices: np.ndarray  # (V, 3) float32
    faces: np.ndarray  # (F, 3) int64; empty for point clouds
    colors: np.ndarray | None = None  # (V, 3) uint8

    @classmethod
    def from_any(cls, mesh: Any) -> MeshData:
        if isinstance(mesh, MeshData):
            return mesh
        v = getattr(mesh, "vertices", None)
        f = getattr(mesh, "faces", None)
        if v is None:
            v, f = mesh
        v = _np(v).astype(np.float32, copy=False).reshape(-1, 3)
        f = np.zeros((0, 3), np.int64) if f is None else _np(f).astype(np.int64, copy=False).reshape(-1, 3)
        return cls(np.ascontiguousarray(v), np.ascontiguousarray(f))

    @property
    def is_empty(self) -> bool:
        return self.vertices.shape[0] == 0


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass
class FaceCodes:
    """One face's latent codes as numpy (what the document stores)."""

    z_id: np.ndarray
    z_exp: np.ndarray
    neutral: bool = False
    z_detail: np.ndarray | None = None

    def copy(self) -> FaceCodes:
        return FaceCodes(
            self.z_id.copy(),
            self.z_exp.copy(),
            bool(self.neutral),
            None if self.z_detail is None else self.z_detail.copy(),
        )

    def equals(self, other: FaceCodes | None) -> bool:
        return (
            other is not None
            and self.neutral == other.neutral
            and np.array_equal(self.z_id, other.z_id)
            and np.array_equal(self.z_exp, other.z_exp)
        )

    def lerp(self, other: FaceCodes, t: float) -> FaceCodes:
        det = None
        if self.z_detail is not None and other.z_detail is not None:
            det = (1 - t) * self.z_detail + t * other.z_detail
        return FaceCodes(
            ((1 - t) * self.z_id + t * other.z_id).astype(np.float32),
            ((1 - t) * self.z_exp + t * other.z_exp).astype(np.float32),
            self.neutral if t < 0.5 else other.neutral,
            det,
        )

    def to_json(self) -> dict:
        d = {"z_id": self.z_id.tolist(), "z_exp": self.z_exp.tolist(), "neutral": bool(self.neutral)}
        if self.z_detail is not None:
            d["z_detail"] = self.z_detail.tolist()
        return d

    @classmethod
    def from_json(cls, d: dict) -> FaceCodes:
        det = d.get("z_detail")
        return cls(
            np.asarray(d["z_id"], np.float32),
            np.asarray(d["z_exp"], np.float32),
            bool(d.get("neutral", False)),
            None if det is None else np.asarray(det, np.float32),
        )


@dataclass
class CodeSpace:
    """Statistics of one code space: slider k moves along basis[k] by std[k] per unit."""

    mean: np.ndarray  # (D,)
    std: np.ndarray  # (K,) std along each principal direction
    basis: np.ndarray  # (K, D) orthonormal rows
    raw_std: np.ndarray  # (D,) per-dimension std (raw-dimension mode)

    @classmethod
    def isotropic(cls, dim: int, std: float) -> CodeSpace:
        return cls(
            np.zeros(dim, np.float32),
            np.full(dim, std, np.float32),
            np.eye(dim, dtype=np.float32),
            np.full(dim, std, np.float32),
        )

    @classmethod
    def from_stats(cls, mean, std, basis, raw_std=None) -> CodeSpace:
        mean = _np(mean).astype(np.float32).reshape(-1)
        basis = _np(basis).astype(np.float32)
        std = _np(std).astype(np.float32).reshape(-1)
        dim = mean.shape[0]
        if basis.ndim != 2 or basis.shape[1] != dim:
            basis = np.eye(dim, dtype=np.float32)
        if std.shape[0] == basis.shape[0]:
            pstd = std
            raw = np.sqrt(np.maximum((basis**2 * pstd[:, None] ** 2).sum(0), 1e-12)).astype(np.float32)
        else:  # per-dimension std: project it onto the directions
            raw = std if std.shape[0] == dim else np.full(dim, float(std.mean() or 0.01), np.float32)
            pstd = np.sqrt(np.maximum((basis**2 * raw[None] ** 2).sum(1), 1e-12)).astype(np.float32)
        if raw_std is not None and _np(raw_std).reshape(-1).shape[0] == dim:
            raw = _np(raw_std).astype(np.float32).reshape(-1)
        pstd = np.where(pstd > 1e-8, pstd, 1e-3).astype(np.float32)
        raw = np.where(raw > 1e-8, raw, 1e-3).astype(np.float32)
        return cls(mean, pstd, basis, raw)

    # slider coordinates <-> codes
    def to_sliders(self, z: np.ndarray, raw: bool = False) -> np.ndarray:
        if raw:
            return (z - self.mean) / self.raw_std
        return (self.basis @ (z - self.mean)) / self.std

    def with_slider(self, z: np.ndarray, k: int, value: float, raw: bool = False) -> np.ndarray:
        z = z.astype(np.float32).copy()
        if raw:
            z[k] = self.mean[k] + value * self.raw_std[k]
            return z
        current = float(self.basis[k] @ (z - self.mean)) / self.std[k]
        z += (value - current) * self.std[k] * self.basis[k]
        return z

    def sample(self, rng: np.random.Generator, scale: float = 0.85) -> np.ndarray:
        t = rng.standard_normal(self.std.shape[0]).astype(np.float32) * scale
        return (self.mean + (t * self.std) @ self.basis).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The loaded model
# --------------------------------------------------------------------------------------------
@dataclass
class FaceModel:
    """A loaded (or untrained) ImFace with what the editor needs about its codes."""

    model: Any  # ImFace (torch) or a test double with the same backend methods
    path: Path | None
    sha256: str
    trained: bool
    id_space: CodeSpace
    exp_space: CodeSpace
    expression_codes: dict[str, np.ndarray] = field(default_factory=dict)  # label -> mean z_exp
    identity_codes: list[np.ndarray] = field(default_factory=list)
    checkpoint: Any = None
    band_cache: Any = None  # imface.extract.BandCache: band reuse between nearby codes
    lock: threading.RLock = field(default_factory=threading.RLock)  # serialises mesh work

    @property
    def id_dim(self) -> int:
        return int(self.id_space.mean.shape[0])

    @property
    def exp_dim(self) -> int:
        return int(self.exp_space.mean.shape[0])

    @property
    def label(self) -> str:
        name = self.path.name if self.path else "random initialisation"
        return name if self.trained else f"UNTRAINED ({name})"

    def mean_codes(self) -> FaceCodes:
        return FaceCodes(self.id_space.mean.copy(), self.exp_space.mean.copy(), neutral=True)

    def expression(self, label: str) -> np.ndarray | None:
        return self.expression_codes.get(label)

    # -- torch side (worker threads) ----------------------------------------------------------
    def torch_codes(self, codes: FaceCodes):
        import torch

        from imface.model.imface import Codes

        det = None
        if getattr(self.model.config, "detail", False):
            det = torch.zeros(1, self.model.config.detail_dim)
            if codes.z_detail is not None:
                det = torch.as_tensor(codes.z_detail, dtype=torch.float32).reshape(1, -1)
        return Codes(
            torch.as_tensor(codes.z_id, dtype=torch.float32).reshape(1, -1),
            torch.as_tensor(codes.z_exp, dtype=torch.float32).reshape(1, -1),
            torch.tensor([bool(codes.neutral)]),
            det,
        )


def untrained_model(config=None) -> FaceModel:
    """A randomly initialised ImFace, clearly labelled untrained (no shipped checkpoint)."""
    import torch

    from imface.config import ModelConfig
    from imface.model.imface import ImFace

    torch.manual_seed(0)
    model = ImFace(config or ModelConfig()).eval()
    cfg = model.config
    return FaceModel(
        model=model,
        path=None,
        sha256="untrained",
        trained=False,
        id_space=CodeSpace.isotropic(cfg.id_dim, 0.01),
        exp_space=CodeSpace.isotropic(cfg.exp_dim, 0.01),
    )


def load_model(path: str | Path | None) -> FaceModel:
    """Load a checkpoint (imface.io). Raises CheckpointError with one clear line."""
    if path is None:
        return untrained_model()
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    load_checkpoint = _need("imface.io", "load_checkpoint", "Loading checkpoints")
    try:
        ckpt = load_checkpoint(path)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure becomes one user-facing line
        raise CheckpointError(f"{path.name}: cannot be loaded ({type(exc).__name__}: {exc})") from exc
    model = ckpt.model.eval()
    cfg = model.config
    codes = getattr(ckpt, "codes", None)
    stats = getattr(ckpt, "stats", None)

    def space(prefix: str, dim: int, table) -> CodeSpace:
        if isinstance(stats, dict) and prefix in stats:  # imface.io.CodeStats
            st = stats[prefix]
            return CodeSpace.from_stats(st.mean, st.basis_std, st.basis, raw_std=st.std)
        if stats is not None and getattr(stats, f"{prefix}_mean", None) is not None:
            return CodeSpace.from_stats(
                getattr(stats, f"{prefix}_mean"),
                getattr(stats, f"{prefix}_std"),
                getattr(stats, f"{prefix}_basis", None),
            )
        if table is not None and len(table) > 1:
            t = _np(table).astype(np.float32)
            mean = t.mean(0)
            _, s, vt = np.linalg.svd(t - mean, full_matrices=False)
            std = s / np.sqrt(max(len(t) - 1, 1))
            return CodeSpace.from_stats(mean, std, vt)
        return CodeSpace.isotropic(dim, 0.01)

    z_id = getattr(codes, "z_id", None) if codes is not None else None
    z_exp = getattr(codes, "z_exp", None) if codes is not None else None
    id_space = space("id", cfg.id_dim, z_id)
    exp_space = space("exp", cfg.exp_dim, z_exp)
    expressions: dict[str, np.ndarray] = {}
    labels = list(getattr(codes, "expression_labels", None) or getattr(ckpt, "expression_labels", None) or [])
    if z_exp is not None and labels and len(labels) == len(z_exp):
        table = _np(z_exp).astype(np.float32)
        for label in dict.fromkeys(labels):
            rows = [i for i, lab in enumerate(labels) if lab == label]
            expressions[str(label)] = table[rows].mean(0)
    identities = [] if z_id is None else list(_np(z_id).astype(np.float32))
    if not expressions and z_exp is not None and len(z_exp) == 0:
        expressions = {}
    return FaceModel(model, path, ckpt.sha256, True, id_space, exp_space, expressions, identities, ckpt)


# --------------------------------------------------------------------------------------------
# Meshes: extraction, morphing, refinement (imface.extract)
# --------------------------------------------------------------------------------------------
# Editor resolutions: the fine grid of `refine` and its coarse pass; previews while dragging
# when no morph base exists yet. (256^3 is the official grid; on a laptop CPU 128 is interactive.)
QUALITY = {"draft": (96, 24), "normal": (128, 32), "high": (192, 48), "official": (256, 64)}
quality = "normal"


def extract(fm: FaceModel, codes: FaceCodes, resolution: int | None = None, cancel=None) -> MeshData:
    if hasattr(fm.model, "backend_extract"):  # test double
        return fm.model.backend_extract(codes, resolution)
    face_sdf = _need("imface.extract", "face_sdf", "Mesh extraction")
    ext = _optional("imface.extract")
    fine, coarse = QUALITY[quality]
    resolution = resolution or fine
    check = None if cancel is None else cancel.is_set
    with fm.lock:
        sdf_fn = face_sdf(fm.model, fm.torch_codes(codes))
        if hasattr(ext, "extract_narrow_band"):
            result = ext.extract_narrow_band(
                sdf_fn, resolution=resolution, coarse_resolution=min(coarse, resolution), cancel=check
            )
        else:
            result = ext.extract_dense(sdf_fn, resolution)
    return _check_mesh(MeshData.from_any(_face_piece(getattr(result, "mesh", result))), fm)


def _face_piece(mesh):
    """The face without the small floating surfaces an SDF learned from open scans grows beside it."""
    return mesh.largest_component() if hasattr(mesh, "largest_component") else mesh


def _check_mesh(mesh: MeshData, fm: FaceModel) -> MeshData:
    if mesh.is_empty:
        hint = " (the model is untrained: train one or load a checkpoint)" if not fm.trained else ""
        raise MeshError(f"the face has no surface at these codes{hint}")
    return mesh


def refine(
    fm: FaceModel, codes: FaceCodes, cancel: threading.Event | None = None
) -> Iterator[tuple[str, MeshData]]:
    """Coarse then fine meshes for these codes (imface.extract.refine, else one extraction)."""
    if hasattr(fm.model, "backend_extract"):
        yield "fine", fm.model.backend_extract(codes, 0)
        return
    ext = _optional("imface.extract")
    if ext is not None and hasattr(ext, "refine"):
        fine, coarse = QUALITY[quality]
        if fm.band_cache is None and hasattr(ext, "BandCache"):
            fm.band_cache = ext.BandCache()
        stream = ext.refine(fm.model, fm.torch_codes(codes), fine, coarse, cancel=cancel, cache=fm.band_cache)
        while True:  # hold the lock while computing a stage, not while the caller uses it
            with fm.lock:
                try:
                    stage, mesh = next(stream)
                except StopIteration:
                    return
            if cancel is not None and cancel.is_set():
                return
            yield stage, _check_mesh(MeshData.from_any(_face_piece(mesh)), fm)
    yield "fine", extract(fm, codes, cancel=cancel)


class Morpher:
    """Fixed-topology morph of a base mesh to new codes (imface.extract.MorphEngine)."""

    def __init__(self, fm: FaceModel, base: MeshData, base_codes: FaceCodes):
        self.fm = fm
        self.base = base
        if hasattr(fm.model, "backend_morph"):
            self._engine = None
            return
        engine_cls = _need("imface.extract", "MorphEngine", "Live morphing")
        import torch

        with fm.lock:
            self._engine = engine_cls(
                fm.model,
                _torch_mesh(base),
                fm.torch_codes(base_codes),
            )
        self._torch = torch

    def morph(self, codes: FaceCodes) -> tuple[np.ndarray, bool]:
        """-> (vertices (V,3) float32, converged)."""
        if self._engine is None:
            return self.fm.model.backend_morph(self.base, codes), True
        with self.fm.lock:
            result = self._engine.morph(self.fm.torch_codes(codes))
        verts = _np(getattr(result, "vertices", result)).astype(np.float32).reshape(-1, 3)
        converged = getattr(result, "converged", True)
        if not isinstance(converged, bool):
            converged = bool(np.mean(_np(converged)) > 0.95)
        return verts, converged


def _torch_mesh(mesh: MeshData):
    ext = _optional("imface.extract")
    if ext is not None and hasattr(ext, "Mesh"):
        try:
            return ext.Mesh(mesh.vertices, mesh.faces)
        except Exception:  # noqa: BLE001
            import torch

            return ext.Mesh(torch.as_tensor(mesh.vertices), torch.as_tensor(mesh.faces))
    return mesh


# --------------------------------------------------------------------------------------------
# Scans and fitting
# --------------------------------------------------------------------------------------------
MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf", ".xyz", ".npy", ".npz")


@dataclass
class ScanData:
    path: Path
    mesh: MeshData  # in the scan's own frame and unit
    unit_mm: float = 1.0  # millimetres per scan unit (for the heat map colour bar)
    handle: Any = None  # what imface.scan.load returned (passed on to the fit)


def load_scan(path: str | Path) -> ScanData:
    path = Path(path)
    if not path.exists():
        raise MeshError(f"{path}: no such file")
    scans = _optional("imface.scan.load")
    if scans is not None and hasattr(scans, "load_scan"):
        try:
            scan = scans.load_scan(path)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise MeshError(f"{path.name}: not a mesh or point cloud that can be read ({exc})") from exc
        verts = getattr(scan, "vertices", None)
        if verts is None:
            verts = scan.points
        mesh = MeshData.from_any((verts, getattr(scan, "faces", None)))
        unit = getattr(scan, "unit_mm", None) or _unit_from_name(getattr(scan, "unit", None)) or 1.0
        return ScanData(path, mesh, float(unit), scan)
    return ScanData(path, _trimesh_load(path), 1.0, None)


def _unit_from_name(name) -> float | None:
    return {"m": 1000.0, "cm": 10.0, "mm": 1.0}.get(str(name)) if name else None


def _trimesh_load(path: Path) -> MeshData:
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise MeshError(f"{path.name}: not a mesh file (expected one of {', '.join(MESH_SUFFIXES)})")
    import trimesh

    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # noqa: BLE001
        raise MeshError(f"{path.name}: not a mesh or point cloud that can be read ({exc})") from exc
    verts = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), np.float32)
    if verts.ndim != 2 or verts.shape[0] < 3 or not np.isfinite(verts).all():
        raise MeshError(f"{path.name}: holds no usable vertices")
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), np.int64).reshape(-1, 3)
    return MeshData(verts, faces)


@dataclass
class FitOutcome:
    codes: FaceCodes
    mesh: MeshData  # fitted mesh in the scan's frame
    distances_mm: np.ndarray  # per scan vertex
    report: dict


def fit(
    fm: FaceModel,
    scan: ScanData,
    progress: Callable[[int, float, MeshData | None], None],
    cancel: threading.Event,
    landmarks: np.ndarray | None = None,
) -> FitOutcome:
    if hasattr(fm.model, "backend_fit"):
        return fm.model.backend_fit(scan, progress, cancel)
    fit_scan = _need("imface.fit.codes", "fit_scan", "Fitting")
    for module, attr in (
        ("imface.scan.align", "align_scan"),
        ("imface.samples.preprocess", "preprocess_mesh"),
        ("imface.scan.load", "load_scan"),
    ):
        _need(module, attr, "Fitting")
    fit_mod = _optional("imface.fit.codes")
    config = fit_mod.FitConfig() if hasattr(fit_mod, "FitConfig") else None
    if config is None:
        cfg_mod = _optional("imface.config")
        config = cfg_mod.FitConfig() if hasattr(cfg_mod, "FitConfig") else None

    def _progress(info, loss=None, mesh=None):
        if isinstance(info, dict):  # imface.fit.codes: {"iteration", "iterations", "loss"[, "mesh"]}
            mesh = info.get("mesh")
            progress(
                int(info.get("iteration", 0)),
                float(info.get("loss", float("nan"))),
                None if mesh is None else MeshData.from_any(mesh),
                int(info.get("iterations", 0)),
            )
        else:
            progress(int(info), float(loss), None if mesh is None else MeshData.from_any(mesh), 0)

    target = scan.handle if scan.handle is not None else scan.path
    ckpt = fm.checkpoint if fm.checkpoint is not None else _stats_shim(fm)
    try:  # no lock: mesh updates go on while the fit runs (inference is thread-safe)
        if landmarks is not None:
            result = _fit_with_landmarks(
                fit_mod, ckpt, scan, np.asarray(landmarks), config, _progress, cancel
            )
        else:
            result = fit_scan(
                ckpt, target, config, preview_every=PREVIEW_EVERY, progress=_progress, cancel=cancel
            )
    except getattr(fit_mod, "FitCancelled", ()) as exc:
        raise FitCancelledError() from exc
    c = result.codes
    codes = FaceCodes(
        _np(c.z_id).astype(np.float32).reshape(-1),
        _np(c.z_exp).astype(np.float32).reshape(-1),
        bool(_np(getattr(c, "neutral", np.zeros(1))).reshape(-1)[0]),
        None if getattr(c, "z_detail", None) is None else _np(c.z_detail).astype(np.float32).reshape(-1),
    )
    mesh = MeshData.from_any(getattr(result, "mesh", None) or (result.vertices, result.faces))
    report = dict(getattr(result, "report", {}) or {})
    dist = report.get("distances_mm")
    if dist is None or len(dist) != scan.mesh.vertices.shape[0]:
        dist = residual_mm(scan.mesh.vertices, mesh.vertices, scan.unit_mm)
    return FitOutcome(codes, mesh, np.asarray(dist, np.float32), report)


PREVIEW_EVERY = 25  # fit iterations between live meshes in the viewport


def _fit_with_landmarks(fit_mod, ckpt, scan: ScanData, points5: np.ndarray, config, progress, cancel):
    """The manual fallback: align from 5 picked points, then fit as usual."""
    from imface.scan.align import align_from_landmarks

    target = scan.handle if scan.handle is not None else scan.path
    alignment = align_from_landmarks(points5)
    return fit_mod.fit_scan(
        ckpt,
        target,
        config,
        alignment=alignment,
        preview_every=PREVIEW_EVERY,
        progress=progress,
        cancel=cancel,
    )


class FitCancelledError(Exception):
    """The fit stopped because the user cancelled it."""


def _stats_shim(fm: FaceModel):
    """What fit_scan needs from a checkpoint, for an untrained model (mean 0, std 0.01)."""
    from types import SimpleNamespace

    import torch

    def stats(space: CodeSpace):
        return SimpleNamespace(
            mean=torch.as_tensor(space.mean),
            std=torch.as_tensor(space.raw_std),
            basis=torch.as_tensor(space.basis),
            basis_std=torch.as_tensor(space.std),
        )

    return SimpleNamespace(
        model=fm.model, stats={"id": stats(fm.id_space), "exp": stats(fm.exp_space)}, config=fm.model.config
    )


def residual_mm(scan_vertices: np.ndarray, fit_vertices: np.ndarray, unit_mm: float) -> np.ndarray:
    """Distance of each scan vertex to the nearest fitted vertex, in mm (heat-map fallback)."""
    from scipy.spatial import cKDTree

    d, _ = cKDTree(fit_vertices).query(scan_vertices, k=1)
    return (d * unit_mm).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Correspondence
# --------------------------------------------------------------------------------------------
def template_coordinates(fm: FaceModel, codes: FaceCodes, vertices: np.ndarray) -> np.ndarray:
    """Template-space position of each vertex (the correspondence key), (V, 3)."""
    if hasattr(fm.model, "backend_template"):
        return fm.model.backend_template(codes, vertices)
    corr = _optional("imface.correspond")
    if corr is not None and hasattr(corr, "template_coordinates"):
        with fm.lock:
            out = corr.template_coordinates(fm.model, fm.torch_codes(codes), np.asarray(vertices, np.float32))
        return _np(out).astype(np.float32)
    import torch

    with fm.lock, torch.no_grad():
        prep = fm.model.prepare(fm.torch_codes(codes))
        parts = []
        pts = torch.as_tensor(vertices, dtype=torch.float32)
        for s in range(0, pts.shape[0], 32768):
            parts.append(fm.model.query(pts[s : s + 32768], prep, detail=False).template)
    return torch.cat(parts).numpy().astype(np.float32)


def texture_colors(template: np.ndarray, mode: str, image: np.ndarray | None = None) -> np.ndarray:
    """Colours (V, 3) uint8 painted in template space: 'coords', 'checker', 'uv', 'image'.

    Projection: the template face looks along +z, so (x, y) in [-1, 1] is the texture plane.
    """
    corr = _optional("imface.correspond")
    if corr is not None and hasattr(corr, "paint"):
        pattern = {"coords": "template", "checker": "checker", "uv": "uv-grid"}.get(mode)
        if pattern is not None or (mode == "image" and image is not None):
            rgb = corr.paint(template, pattern or "template", image=image if mode == "image" else None)
            rgb = np.asarray(rgb)
            if rgb.dtype != np.uint8:
                rgb = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
            return rgb[:, :3]
    t = np.asarray(template, np.float32)
    u = np.clip((t[:, 0] + 1) / 2, 0, 1)
    v = np.clip((t[:, 1] + 1) / 2, 0, 1)
    if mode == "coords":
        lo, hi = np.array([-0.8, -0.9, -0.3]), np.array([0.8, 0.8, 0.6])
        rgb = np.clip((t - lo) / (hi - lo), 0, 1)
    elif mode == "checker":
        n = 12
        on = ((np.floor(u * n) + np.floor(v * n)) % 2).astype(np.float32)
        rgb = np.stack([0.15 + 0.8 * on, 0.15 + 0.8 * on, 0.2 + 0.6 * (1 - on)], 1)
    elif mode == "uv":
        n = 10
        line = (np.minimum((u * n) % 1, (v * n) % 1) < 0.12).astype(np.float32)
        rgb = np.stack([u, v, 0.5 * np.ones_like(u)], 1) * (1 - line[:, None]) + 0.05 * line[:, None]
    elif mode == "image" and image is not None:
        h, w = image.shape[:2]
        x = np.clip((u * (w - 1)).astype(int), 0, w - 1)
        y = np.clip(((1 - v) * (h - 1)).astype(int), 0, h - 1)
        px = image[y, x, :3].astype(np.float32)
        return px.astype(np.uint8)
    else:
        rgb = np.full((t.shape[0], 3), 0.8, np.float32)
    return (rgb * 255).astype(np.uint8)


def match_point(template_a: np.ndarray, index: int, template_b: np.ndarray) -> int:
    """Index of B's vertex corresponding to vertex `index` of A (nearest in template space)."""
    corr = _optional("imface.correspond")
    if corr is not None and hasattr(corr, "correspondence"):
        idx, _dist = corr.correspondence(template_a[index : index + 1], template_b)
        return int(np.asarray(idx).reshape(-1)[0])
    d = np.linalg.norm(template_b - template_a[index][None], axis=1)
    return int(np.argmin(d))


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
EXPORT_FORMATS = {"obj": "Wavefront OBJ", "ply": "PLY", "stl": "STL", "glb": "glTF binary (GLB)"}


def export_mesh(mesh: MeshData, path: str | Path, unit_mm: float = MODEL_UNIT_MM) -> str:
    """Write the mesh in millimetres (model units x 100); colours where the format keeps them.

    Returns a one-line description (units, colours) for the status bar.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"{path.name}: unknown export format (use {', '.join(EXPORT_FORMATS)})")
    io = _optional("imface.io")
    verts_mm = mesh.vertices.astype(np.float64) * unit_mm
    if io is not None and hasattr(io, "save_mesh"):
        try:
            io.save_mesh(path, verts_mm.astype(np.float32), mesh.faces, colors=mesh.colors)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{path.name}: cannot be written ({exc})") from exc
        return _export_note(path, fmt, mesh)
    import trimesh

    colors = None
    if mesh.colors is not None and fmt != "stl":
        colors = np.concatenate([mesh.colors, np.full((len(mesh.colors), 1), 255, np.uint8)], 1)
    tm = trimesh.Trimesh(verts_mm, mesh.faces, vertex_colors=colors, process=False)
    try:
        tm.export(path)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path.name}: cannot be written ({exc})") from exc
    return _export_note(path, fmt, mesh)


def _export_note(path: Path, fmt: str, mesh: MeshData) -> str:
    colours = "with vertex colours" if mesh.colors is not None and fmt != "stl" else "no colours"
    if fmt == "stl" and mesh.colors is not None:
        colours = "no colours (STL has none)"
    return f"Saved {path.name}: {len(mesh.vertices)} vertices, units: millimetres, {colours}"


def export_rig(fm: FaceModel, codes: FaceCodes, folder: str | Path) -> str:
    gen = _optional("imface.generate")
    if gen is not None and hasattr(gen, "export_rig") and hasattr(gen, "expression_codes"):
        if fm.checkpoint is None:
            raise UserError("the expression rig needs a trained checkpoint (its expression codes)")
        import torch

        with fm.lock:
            expressions = gen.expression_codes(fm.checkpoint)
            manifest = gen.export_rig(
                fm.model, torch.as_tensor(codes.z_id).reshape(-1), expressions, Path(folder)
            )
        n = len(manifest.get("expressions", [])) if isinstance(manifest, dict) else len(expressions)
        return f"Expression rig ({n} expressions + neutral) written to {folder}: OBJ in mm, rig.glb in m"
    func = None
    for name in ("export_rig", "write_rig", "expression_rig"):
        if gen is not None and hasattr(gen, name):
            func = getattr(gen, name)
            break
    if func is None:
        rig = _optional("imface.generate_rig")
        for name in ("export_rig", "write_rig"):
            if rig is not None and hasattr(rig, name):
                func = getattr(rig, name)
                break
    if func is None:
        raise Unavailable("Expression rig export is not available in this build (imface.generate)")
    import torch

    with fm.lock:
        func(fm.model, torch.as_tensor(codes.z_id).reshape(1, -1), Path(folder))
    return f"Expression rig written to {folder}"
