"""Small safetensors files tagged with a format name and JSON metadata (an albedo, a fitted
person's detail): written atomically, read with every problem one ``UserError`` line naming the
file and what it should have been. Never pickle."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from imface.errors import UserError

MAX_HEADER = 1 << 20


def save_tagged(path: str | Path, fmt: str, key: str, meta: dict, tensors: dict[str, np.ndarray]) -> Path:
    """Write tensors + {"format": fmt, key: json(meta)} atomically."""
    from safetensors.numpy import save

    from imface.paths import atomic_write_bytes

    return atomic_write_bytes(path, save(tensors, metadata={"format": fmt, key: json.dumps(meta)}))


def load_tagged(path: str | Path, fmt: str, key: str, what: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, tensors) of a file written by `save_tagged` with this format; `what` names the
    kind of file in messages ("an albedo file")."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    meta = _metadata(path, data, fmt, key, what)
    try:
        from safetensors.numpy import load

        tensors = load(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise UserError(f"{path}: not a readable {what.split(' ', 1)[-1]} ({first_line(exc)})") from None
    return meta, tensors


def first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:160]


def _metadata(path: Path, data: bytes, fmt: str, key: str, what: str) -> dict:
    if len(data) < 8:
        raise UserError(f"{path}: not {what} (too short)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(MAX_HEADER, len(data) - 8):
        raise UserError(f"{path}: not {what} (bad safetensors header)")
    try:
        header = json.loads(data[8 : 8 + size])
        metadata = header.get("__metadata__") or {}
        if metadata.get("format") != fmt:
            raise ValueError(f"format {metadata.get('format')!r}, expected {fmt!r}")
        meta = json.loads(metadata.get(key, "{}"))
        if not isinstance(meta, dict):
            raise ValueError("metadata is not an object")
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not {what} ({first_line(exc)})") from None
    return meta


# -- beside a codes file: fit --codes C.json writes C.<kind>.safetensors and names it in C.json --
def companion_path(codes_path: str | Path, kind: str) -> Path:
    """Where `fit --codes C.json` puts a companion file: C.<kind>.safetensors beside it."""
    codes_path = Path(codes_path)
    name = codes_path.name
    stem = name[: -len(".json")] if name.lower().endswith(".json") else name
    return codes_path.with_name(f"{stem}.{kind}.safetensors")


def companion_named(codes_path: str | Path, key: str) -> Path | None:
    """The file a codes JSON names under `key` (a file beside it), else None."""
    codes_path = Path(codes_path)
    try:
        data = json.loads(codes_path.read_text())
    except (OSError, ValueError):
        return None  # the codes reader reports a bad codes file
    name = data.get(key) if isinstance(data, dict) else None
    if not name:
        return None
    if not isinstance(name, str) or Path(name).name != name:
        raise UserError(f"{codes_path}: '{key}' must name a file beside the codes file")
    return codes_path.with_name(name)
