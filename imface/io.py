"""Checkpoints and mesh files.

A checkpoint is one safetensors file: tensors for the weights, the trained codes and their
statistics; JSON strings in the header metadata for the config, the codes' labels and free-form
metadata. Loading never unpickles: a pickle or ``torch.save`` file is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imface.config import ModelConfig
from imface.errors import CheckpointError, MeshError
from imface.model import Codes, ImFace
from imface.model.basis import ShapeBasis
from imface.paths import atomic_output, missing_reason

FORMAT_NAME = "imface-checkpoint"
FORMAT_VERSION = 1
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "resources" / "imface_default.safetensors"

_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container (holds a pickle)
_MAX_HEADER = 100 * 1024 * 1024


# -- statistics of the trained codes (for sampling and the editor's sliders) -----------------
@dataclass
class CodeStats:
    """Mean, per-dimension std and principal directions of a set of codes."""

    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)
    basis: torch.Tensor  # (K, D) orthonormal rows, most variance first
    basis_std: torch.Tensor  # (K,) std of the codes along each row

    @classmethod
    def of(cls, codes: torch.Tensor) -> CodeStats:
        codes = codes.detach().float()
        mean = codes.mean(0)
        if codes.shape[0] < 2:
            d = codes.shape[1]
            return cls(mean, torch.zeros(d), torch.eye(d), torch.zeros(d))
        centred = codes - mean
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        return cls(mean, codes.std(0), vh, s / (codes.shape[0] - 1) ** 0.5)

    def sample(self, n: int, scale: float = 1.0, generator: torch.Generator | None = None):
        """mean + scale * std * N(0, 1) along the principal directions."""
        k = self.basis.shape[0]
        noise = torch.randn(n, k, generator=generator)
        return self.mean + (scale * noise * self.basis_std) @ self.basis


@dataclass
class TrainedCodes:
    """The auto-decoder's codes: one per identity, one per non-neutral scan (and detail codes)."""

    z_id: torch.Tensor  # (I, id_dim)
    z_exp: torch.Tensor  # (E, exp_dim)
    identity_labels: list[str]
    expression_labels: list[str]  # FaceScape label of each expression code, e.g. "2_smile"
    expression_keys: list[str] = field(default_factory=list)  # scan key of each expression code
    expression_identity: list[int] = field(default_factory=list)  # identity index per exp code
    z_detail: torch.Tensor | None = None  # (scans, detail_dim)
    detail_keys: list[str] = field(default_factory=list)

    def face(self, identity: int, expression: int | None) -> Codes:
        """Codes of one face: an identity with an expression code (None = neutral)."""
        z_exp = self.z_exp[expression] if expression is not None else torch.zeros_like(self.z_exp[0])
        return Codes(self.z_id[identity], z_exp, torch.tensor([expression is None]))

    def labels_json(self) -> dict[str, Any]:
        return dict(
            identity_labels=self.identity_labels,
            expression_labels=self.expression_labels,
            expression_keys=self.expression_keys,
            expression_identity=self.expression_identity,
            detail_keys=self.detail_keys,
        )


@dataclass
class Checkpoint:
    model: ImFace
    codes: TrainedCodes
    meta: dict[str, Any]
    path: Path | None = None
    sha256: str = ""
    basis: ShapeBasis | None = None  # the code bases, when the codes are tied to registrations

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def stats(self) -> dict[str, CodeStats]:
        return {"id": CodeStats.of(self.codes.z_id), "exp": CodeStats.of(self.codes.z_exp)}


# -- save --------------------------------------------------------------------------------------
def save_checkpoint(
    path: str | Path,
    model: ImFace,
    codes: TrainedCodes,
    meta: dict[str, Any] | None = None,
    basis: ShapeBasis | None = None,
) -> Path:
    """Write atomically (temporary file, then rename): a crash never leaves a half checkpoint."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors["codes.z_id"] = codes.z_id.detach().cpu().contiguous()
    tensors["codes.z_exp"] = codes.z_exp.detach().cpu().contiguous()
    if codes.z_detail is not None:
        tensors["codes.z_detail"] = codes.z_detail.detach().cpu().contiguous()
    if basis is not None:
        tensors.update(basis.tensors())
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": model.config.to_json(),
        "codes": json.dumps(codes.labels_json()),
        "meta": json.dumps(meta or {}, default=str),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


# -- load --------------------------------------------------------------------------------------
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint safely; any problem raises CheckpointError naming the file.

    Everything that can be checked from the header (format, config, every tensor's shape and
    dtype) is checked before a byte of weights is read or the model is built, so a hostile config
    cannot make us allocate more than the file holds."""
    path = Path(path)
    header = _read_header(path)
    metadata = _check_format(path, header.get("__metadata__"))
    config = _parse_config(path, metadata)
    _check_shapes(path, config, header)
    labels = _parse_labels(path, metadata, header)
    meta = _parse_meta(path, metadata)
    tensors = _read_tensors(path)
    _check_finite(path, tensors)
    model = ImFace(config)
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    codes = TrainedCodes(
        z_id=tensors["codes.z_id"].float(),
        z_exp=tensors["codes.z_exp"].float(),
        z_detail=tensors["codes.z_detail"].float() if "codes.z_detail" in tensors else None,
        **labels,
    )
    basis = ShapeBasis.from_tensors(tensors)
    if config.linear_backbone and basis is None:
        raise CheckpointError(f"{path}: the model is built on registration bases the file does not hold")
    model.attach_basis(basis)
    model.to(device).eval()
    return Checkpoint(model, codes, meta, path, file_sha256(path), basis)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_header(path: Path) -> dict:
    """The safetensors header (tensor names, dtypes, shapes; metadata), after refusing pickles."""
    if not path.exists():
        reason = missing_reason(path)
        if reason == "no such file":
            raise CheckpointError(f"{path}: no such checkpoint file")
        raise CheckpointError(f"{path}: cannot open the checkpoint: {reason}")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if head[:2] in _PICKLE_MAGIC or head[:4] == _ZIP_MAGIC:
            raise CheckpointError(
                f"{path}: this is a pickle / torch.save file; ImFace checkpoints are safetensors and "
                "are never unpickled (convert it with a trusted script first)"
            )
        if size < 8:
            raise CheckpointError(f"{path}: truncated ({size} bytes) or not a checkpoint")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > _MAX_HEADER or 8 + header_len > size:
            raise CheckpointError(f"{path}: truncated or not a safetensors checkpoint (bad header)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt checkpoint (the header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint (the header is not a JSON object)")
    for name, entry in header.items():
        if name != "__metadata__" and not _valid_entry(entry):
            raise CheckpointError(f"{path}: corrupt checkpoint (bad header entry for {name[:80]!r})")
    return header


def _valid_entry(entry) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("dtype"), str)
        and isinstance(entry.get("shape"), list)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in entry["shape"])
    )


def _check_format(path: Path, metadata) -> dict[str, str]:
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: a safetensors file, but not an ImFace checkpoint")
    version = metadata.get("format_version", "?")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path}: checkpoint format version {version}; this program reads {FORMAT_VERSION}"
        )
    return metadata


def _parse_config(path: Path, metadata: dict[str, str]) -> ModelConfig:
    if "config" not in metadata:
        raise CheckpointError(f"{path}: invalid model config (the checkpoint stores none)")
    try:
        return ModelConfig.from_dict(json.loads(metadata["config"]))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model config ({exc})") from None


def _check_shapes(path: Path, config: ModelConfig, header: dict) -> None:
    """Compare the stored tensors with the config's model built on the meta device (no memory)."""
    try:
        with torch.device("meta"):
            expected = {f"model.{k}": tuple(v.shape) for k, v in ImFace(config).state_dict().items()}
    except Exception as exc:  # a config the network cannot be built from
        raise CheckpointError(f"{path}: invalid model config ({type(exc).__name__}: {exc})") from None
    stored = {k: v for k, v in header.items() if k.startswith("model.")}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    wrong = [
        f"{k[6:]} {tuple(stored[k]['shape'])} != {shape}"
        for k, shape in expected.items()
        if k in stored and tuple(stored[k]["shape"]) != shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors (e.g. {missing[0][6:]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0][6:]})")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape (e.g. {wrong[0]})")
    if problems:
        raise CheckpointError(f"{path}: config does not match the stored weights: " + "; ".join(problems))
    code_dims = {
        "codes.z_id": config.id_dim,
        "codes.z_exp": config.exp_dim,
        "codes.z_detail": config.detail_dim,
    }
    for name, dim in code_dims.items():
        if name not in header:
            if name != "codes.z_detail":
                raise CheckpointError(f"{path}: codes missing or unreadable (no {name})")
            continue
        shape = header[name]["shape"]
        if len(shape) != 2 or shape[1] != dim:
            raise CheckpointError(f"{path}: {name[6:]} codes {tuple(shape)} do not match the config ({dim})")
    if header["codes.z_id"]["shape"][0] < 1:
        raise CheckpointError(f"{path}: the checkpoint holds no identity codes")
    _check_basis(path, config, header)
    for name, entry in header.items():
        if name.startswith(_STORED) and entry["dtype"] not in _FLOAT_DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has dtype {entry['dtype']}, expected floats")


_STORED = ("model.", "codes.", "basis.")
_MAX_BASIS_VERTICES = 100_000


def _check_basis(path: Path, config: ModelConfig, header: dict) -> None:
    stored = {k: tuple(v["shape"]) for k, v in header.items() if k.startswith("basis.")}
    if not stored:
        return
    mean = stored.get("basis.mean", ())
    vertices = mean[0] if len(mean) == 2 else -1
    expected = ShapeBasis.expected_shapes(config.id_dim, config.exp_dim, vertices)
    if not 0 < vertices <= _MAX_BASIS_VERTICES or stored != expected:
        raise CheckpointError(f"{path}: the code bases do not match the config ({stored} != {expected})")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(_STORED)}
    except Exception as exc:  # the library raises its own error types for every corruption
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc})") from None


def _check_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    bad = [name for name, t in tensors.items() if not bool(torch.isfinite(t).all())]
    if bad:
        what = "codes" if all(n.startswith("codes.") for n in bad) else "weights"
        raise CheckpointError(
            f"{path}: {len(bad)} tensors hold NaN or infinite values (e.g. {bad[0]}); "
            f"the {what} are unusable (a diverged training run?)"
        )


def _parse_labels(path: Path, metadata: dict[str, str], header: dict) -> dict[str, list]:
    """The codes' labels, type-checked and counted against the code tables in the header."""
    try:
        labels = json.loads(metadata.get("codes", "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: codes labels unreadable ({exc})") from None
    if not isinstance(labels, dict):
        raise CheckpointError(f"{path}: codes labels must be a JSON object")
    identities = header["codes.z_id"]["shape"][0]
    expressions = header["codes.z_exp"]["shape"][0]
    details = header["codes.z_detail"]["shape"][0] if "codes.z_detail" in header else 0
    counts = {
        "identity_labels": (str, identities),
        "expression_labels": (str, expressions),
        "expression_keys": (str, expressions),
        "expression_identity": (int, expressions),
        "detail_keys": (str, details),
    }
    out = {}
    for name, (kind, count) in counts.items():
        value = labels.get(name, [])
        if not isinstance(value, list) or not all(_is(v, kind) for v in value):
            raise CheckpointError(f"{path}: codes label {name!r} must be a list of {kind.__name__}s")
        if len(value) not in (0, count):
            raise CheckpointError(f"{path}: {len(value)} {name.replace('_', ' ')} for {count} codes")
        out[name] = value
    if any(not 0 <= i < identities for i in out["expression_identity"]):
        raise CheckpointError(f"{path}: expression_identity refers to identities that do not exist")
    return out


def _is(value, kind) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def _parse_meta(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    try:
        meta = json.loads(metadata.get("meta", "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata must be a JSON object")
    return meta


# -- meshes --------------------------------------------------------------------------------
MESH_FORMATS = (".obj", ".ply", ".stl", ".glb")


def save_mesh(
    path: str | Path,
    vertices: np.ndarray,
    faces: np.ndarray,
    colors: np.ndarray | None = None,
) -> Path:
    """Write a mesh as OBJ, PLY, STL or GLB; per-vertex colours (V, 3|4) uint8 or float in [0, 1]
    go where the format has them (STL has none)."""
    import trimesh

    path = Path(path)
    if path.suffix.lower() not in MESH_FORMATS:
        raise MeshError(f"{path}: unsupported mesh format (use one of {', '.join(MESH_FORMATS)})")
    mesh = trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces), process=False)
    if colors is not None:
        colors = np.asarray(colors)
        if colors.dtype != np.uint8:
            colors = np.clip(np.round(colors * 255), 0, 255).astype(np.uint8)
        mesh.visual.vertex_colors = colors
    with atomic_output(path) as tmp:
        mesh.export(str(tmp), file_type=path.suffix[1:].lower())
    return path
