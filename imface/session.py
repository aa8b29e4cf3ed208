"""The one door into the library for the editor and the CLI: a loaded model and what can be done
with it (code space, meshes for codes at a quality, a morpher, fit a scan, template coordinates,
paint, export).

Everything here is plain numpy at the boundary, imported statically, and raises typed errors
(``imface.errors``). Long work comes as jobs (``imface.jobs``: generators of ``Progress`` that
return their result; closing one cancels it). Model calls hold ``Session.lock``; the fit runs on a
private copy of the network, so the editor's meshes keep coming while it runs.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imface.appearance.albedo import Albedo, NoColourOnFace, colours_for, transfer_colours
from imface.codes import CodeSpace, FaceCodes, to_numpy
from imface.config import FitConfig, ModelConfig
from imface.correspond import match_vertex, paint_colors, template_coordinates
from imface.errors import AlignmentError, CheckpointError, MeshError, UserError
from imface.extract import BandCache, Mesh, extract_narrow_band, face_sdf, refine
from imface.extract.live import Morpher, MorphFrame
from imface.extract.repair import MORPH_RADIUS, crop_to_region
from imface.fit.refine import DetailMap, along_normals
from imface.fit.scan import fit_scan_job
from imface.generate import FACESCAPE_EXPRESSIONS, export_rig, expression_codes, write_face
from imface.io import DEFAULT_CHECKPOINT, Checkpoint, TrainedCodes, load_checkpoint
from imface.jobs import Cancelled, Job, Progress
from imface.model.imface import Codes, ImFace
from imface.scan.align import Alignment, align_from_landmarks, align_scan
from imface.scan.load import Scan, decimate, load_scan
from imface.units import MM_PER_UNIT, UNITS

__all__ = ["DEFAULT_CHECKPOINT", "AlignmentError", "CheckpointError", "MeshError", "UserError"]


# name -> (fine grid, coarse grid). 256^3 is the official grid; on a 2-core CPU a 96^3 narrow
# band of the shipped model takes about 1-2 s, 128^3 about 3-6 s.
QUALITY = {"draft": (96, 24), "normal": (128, 32), "high": (192, 48), "official": (256, 64)}
DEFAULT_QUALITY = "draft"
PREVIEW_RESOLUTION = 48  # quick re-extraction while a drag goes where the morph cannot follow
DISPLAY_VERTICES = 20_000  # scans are shown decimated to about this many vertices
PREVIEW_EVERY = 25  # fit iterations between live meshes


# -- scans and fits ---------------------------------------------------------------------------
@dataclass
class LoadedScan:
    """A scan in its own frame and unit, and a decimated copy for display."""

    scan: Scan
    display: Mesh  # at most about DISPLAY_VERTICES vertices (the full scan is kept for the fit)

    @property
    def path(self) -> Path:
        return Path(self.scan.path)

    @property
    def unit_mm(self) -> float:
        return UNITS[self.scan.unit] * 1000.0


@dataclass
class FitOutcome:
    codes: FaceCodes
    mesh: Mesh  # the fitted face in the scan's frame and unit
    distances_mm: np.ndarray  # scan vertex -> fitted surface, per vertex of the full scan
    display_distances_mm: np.ndarray  # the same for the vertices of the display copy
    alignment: Alignment
    report: dict
    albedo: Albedo | None = None  # the scan's colour in template space; None: the scan had none
    detail: DetailMap | None = None  # the person's detail in template space; None: --no-detail


# -- the session --------------------------------------------------------------------------------
@dataclass
class Session:
    """A loaded model and everything the editor and the CLI do with it."""

    model: ImFace
    checkpoint: Checkpoint  # an untrained session holds one zero code per space
    trained: bool
    id_space: CodeSpace
    exp_space: CodeSpace
    expression_codes: dict[str, np.ndarray] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path = DEFAULT_CHECKPOINT) -> Session:
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"{path}: no such checkpoint file")
        ckpt = load_checkpoint(path)
        ckpt.model.eval()
        return cls._trained(ckpt)

    @classmethod
    def untrained(cls, config: ModelConfig | None = None, seed: int = 0) -> Session:
        """A randomly initialised model, clearly labelled untrained."""
        torch.manual_seed(seed)
        model = ImFace(config or ModelConfig()).eval()
        cfg = model.config
        codes = TrainedCodes(torch.zeros(1, cfg.id_dim), torch.zeros(1, cfg.exp_dim), ["untrained"], [])
        ckpt = Checkpoint(model, codes, {}, None, "untrained")
        return cls(
            model, ckpt, False, CodeSpace.isotropic(cfg.id_dim, 0.01), CodeSpace.isotropic(cfg.exp_dim, 0.01)
        )

    @classmethod
    def from_model(cls, model: ImFace, codes: TrainedCodes, sha256: str = "in-memory") -> Session:
        """A session on a model already in memory (tests, freshly trained networks)."""
        return cls._trained(Checkpoint(model.eval(), codes, {}, None, sha256))

    @classmethod
    def _trained(cls, ckpt: Checkpoint) -> Session:
        named = expression_codes(ckpt) if ckpt.codes.expression_labels else {}
        expressions = {name: to_numpy(z) for name, z in named.items()}
        stats = ckpt.stats
        return cls(ckpt.model, ckpt, True, CodeSpace.of(stats["id"]), CodeSpace.of(stats["exp"]), expressions)

    @property
    def path(self) -> Path | None:
        return self.checkpoint.path

    @property
    def sha256(self) -> str:
        return self.checkpoint.sha256

    @property
    def label(self) -> str:
        name = self.path.name if self.path else "random initialisation"
        return name if self.trained else f"UNTRAINED ({name})"

    @property
    def id_dim(self) -> int:
        return int(self.id_space.mean.shape[0])

    @property
    def exp_dim(self) -> int:
        return int(self.exp_space.mean.shape[0])

    def mean_codes(self) -> FaceCodes:
        return FaceCodes(self.id_space.mean.copy(), self.exp_space.mean.copy(), neutral=True)

    def torch_codes(self, codes: FaceCodes) -> Codes:
        detail = None
        if self.model.config.detail:
            detail = torch.zeros(1, self.model.config.detail_dim)
            if codes.z_detail is not None:
                detail = torch.as_tensor(codes.z_detail, dtype=torch.float32).reshape(1, -1)
        return Codes(
            torch.as_tensor(codes.z_id, dtype=torch.float32).reshape(1, -1),
            torch.as_tensor(codes.z_exp, dtype=torch.float32).reshape(1, -1),
            torch.tensor([bool(codes.neutral)]),
            detail,
        )

    # -- meshes -------------------------------------------------------------------------------
    def _face(self, mesh: Mesh) -> Mesh:
        """The face as shown and exported: inside the region the model was trained on, one piece."""
        vertices, faces = crop_to_region(mesh.vertices, mesh.faces)
        face = Mesh(vertices, faces).largest_component()
        if face.num_vertices == 0:
            hint = "" if self.trained else " (the model is untrained: train one or load a checkpoint)"
            raise MeshError(f"the face has no surface at these codes{hint}")
        return face

    def mesh_job(
        self,
        codes: FaceCodes,
        quality: str = DEFAULT_QUALITY,
        cache: BandCache | None = None,
        interrupt: Callable[[], bool] | None = None,
    ) -> Job[Mesh]:
        """Coarse then fine mesh of these codes; each stage is yielded as a preview ("coarse",
        mesh). `interrupt` is also checked between network chunks, so that a newer request stops
        a running extraction at once (closing the job works only between stages)."""
        fine, coarse = QUALITY[quality]
        stop = threading.Event()

        def stopped() -> bool:
            return stop.is_set() or (interrupt is not None and interrupt())

        stream = refine(self.model, self.torch_codes(codes), fine, coarse, cancel=stopped, cache=cache)
        stage, mesh = "", None
        try:
            yield Progress("Extracting face", 0, 2, f"{fine}^3 grid")
            while True:
                with self.lock:
                    step = next(stream, None)
                if step is None:
                    break
                stage, mesh = step[0], self._face(step[1])
                yield Progress(
                    "Extracting face", 2 if stage == "fine" else 1, 2, stage, preview=(stage, mesh)
                )
        finally:
            stop.set()
            stream.close()
        if stage != "fine":
            raise Cancelled("Extracting face")
        return mesh

    def extract(self, codes: FaceCodes, resolution: int = 96) -> Mesh:
        """One quick mesh (previews, the second face of the comparison)."""
        with self.lock:
            sdf = face_sdf(self.model, self.torch_codes(codes))
            band = extract_narrow_band(sdf, resolution=resolution, coarse_resolution=max(resolution // 4, 8))
        return self._face(band.mesh)

    def morpher(self, base: Mesh, base_codes: FaceCodes) -> Morpher:
        return Morpher(self, base, base_codes)

    # -- correspondence and paint -----------------------------------------------------------------
    def template_coordinates(self, codes: FaceCodes, vertices: np.ndarray) -> np.ndarray:
        with self.lock:
            out = template_coordinates(self.model, self.torch_codes(codes), np.asarray(vertices, np.float32))
        return out.astype(np.float32)

    def detail_offsets(self, codes: FaceCodes, vertices: np.ndarray, detail: DetailMap) -> np.ndarray:
        """Per-vertex offsets (model units, along the normals) that give a face of these codes a
        fitted person's detail."""
        return detail.lookup(self.template_coordinates(codes, vertices))

    # -- scans and fitting -----------------------------------------------------------------------
    def load_scan_job(self, path: str | Path) -> Job[LoadedScan]:
        yield Progress("Loading scan", 0, 2, Path(path).name)
        scan = load_scan(path)
        yield Progress("Loading scan", 1, 2, "display copy")
        return LoadedScan(scan, _display_copy(scan))

    def fit_job(
        self, loaded: LoadedScan, landmarks: np.ndarray | None = None, config: FitConfig | None = None
    ) -> Job[FitOutcome]:
        """Align (automatically, or from 5 picked points), fit the codes, measure the residual."""
        scan = loaded.scan
        yield Progress("Aligning scan", 0, None, loaded.path.name)
        alignment = _align(scan, landmarks)
        # a private copy: the fit freezes the network's parameters, the editor's meshes go on
        private = dataclasses.replace(self.checkpoint, model=copy.deepcopy(self.model))
        result = yield from fit_scan_job(
            private, scan, config or FitConfig(), alignment=alignment, preview_every=PREVIEW_EVERY
        )
        yield Progress("Measuring the residual", 0, None)
        mesh = Mesh(result.vertices, result.faces)
        unit_mm = loaded.unit_mm
        albedo = None
        if scan.colours is not None:
            yield Progress("Transferring colour", 0, None, f"{len(scan.colours.points)} samples")
            albedo = scan_albedo(private.model, result, scan)
        return FitOutcome(
            FaceCodes.from_torch(result.codes),
            mesh,
            distances_mm(scan.vertices, mesh, unit_mm),
            distances_mm(loaded.display.vertices, mesh, unit_mm),
            alignment,
            result.report,
            albedo,
            result.detail,
        )

    # -- colour ---------------------------------------------------------------------------------
    def albedo_colors(self, codes: FaceCodes, vertices: np.ndarray, albedo: Albedo) -> np.ndarray:
        """Per-vertex sRGB uint8 of a face of this model (model frame) coloured by an albedo."""
        return colours_for(lambda p: self.template_coordinates(codes, p), vertices, albedo)

    # -- export ---------------------------------------------------------------------------------
    def export_mesh(self, mesh: Mesh, path: str | Path, colors: np.ndarray | None = None) -> str:
        """Write a face of the model frame (GLB in metres, OBJ/PLY/STL in mm, unit in the sidecar)."""
        info = write_face(path, mesh.vertices, mesh.faces, colors, {"checkpoint_sha256": self.sha256})
        colours = "with vertex colours" if info["colors"] else "no colours"
        if colors is not None and not info["colors"]:
            colours = "no colours (the format has none)"
        return f"Saved {Path(path).name}: {info['vertices']} vertices, units: {info['unit_name']}, {colours}"

    def export_rig_job(
        self, codes: FaceCodes, folder: str | Path, resolution: int = 128, albedo: Albedo | None = None
    ) -> Job[str]:
        if not self.expression_codes:
            raise UserError("the expression rig needs a trained checkpoint with labelled expression codes")
        yield Progress("Exporting rig", 0, None, f"{len(self.expression_codes)} expressions")
        with self.lock:
            manifest = export_rig(
                self.model,
                torch.as_tensor(codes.z_id),
                expression_codes(self.checkpoint),
                Path(folder),
                resolution,
                albedo=albedo,
            )
        return rig_summary(manifest, folder)


def rig_summary(manifest: dict, folder) -> str:
    n = len(manifest["expressions"])
    return (
        f"Rig written to {folder}: neutral + {n} expressions ({n} morph targets); meshes in mm, rig.glb in m"
    )


def scan_albedo(model: ImFace, result, scan: Scan) -> Albedo | None:
    """The colour of a fitted scan in template space (`result`: a fit_scan FitResult); None when
    none of its coloured points lies on the fitted face (the face keeps a neutral albedo)."""
    alignment = result.alignment
    name = Path(scan.path).name if scan.path else "the scan"
    try:
        return transfer_colours(
            alignment.to_model(scan.colours.points),
            scan.colours.rgb,
            alignment.to_model(result.vertices),
            result.faces,
            lambda p: template_coordinates(model, result.codes, p),
            source=f"{name} ({scan.colours.source})",
        )
    except NoColourOnFace:
        return None


def distances_mm(points: np.ndarray, mesh: Mesh, unit_mm: float) -> np.ndarray:
    """Distance of each point to a mesh (nearest vertex, then its tangent plane), in mm."""
    from scipy.spatial import cKDTree

    from imface.extract.repair import vertex_normals

    normals = vertex_normals(mesh.vertices, mesh.faces)
    nearest, idx = cKDTree(mesh.vertices).query(np.asarray(points, np.float64), k=1)
    along = np.abs(((points - mesh.vertices[idx]) * normals[idx]).sum(-1))
    return (np.minimum(along, nearest) * unit_mm).astype(np.float32)


def _display_copy(scan: Scan) -> Mesh:
    faces = scan.faces if scan.faces is not None else np.zeros((0, 3), np.int64)
    if len(scan.vertices) <= DISPLAY_VERTICES or scan.faces is None:
        return Mesh(scan.vertices, faces)
    vertices, faces = decimate(scan.vertices, scan.faces, DISPLAY_VERTICES)
    return Mesh(vertices, faces)


def _align(scan: Scan, landmarks: np.ndarray | None) -> Alignment:
    if landmarks is not None:
        return align_from_landmarks(np.asarray(landmarks, np.float64))
    try:
        return align_scan(scan.vertices, scan.faces, unit=None, path=Path(scan.path).name)
    except MeshError as exc:  # every failure of the automatic alignment: offer the 5 points
        raise AlignmentError(str(exc)) from exc


__all__ += [
    "Albedo", "DetailMap", "along_normals", "FACESCAPE_EXPRESSIONS", "QUALITY", "DEFAULT_QUALITY",
    "MORPH_RADIUS", "CodeSpace",
    "FaceCodes", "scan_albedo", "FitOutcome", "LoadedScan", "MorphFrame", "Morpher", "Session",
    "distances_mm", "match_vertex", "paint_colors", "rig_summary", "MM_PER_UNIT",
]  # fmt: skip
