"""Random faces and expression rigs.

``sample_faces`` draws identity and expression codes from a Gaussian fitted to the training
codes (``python -m imface generate`` writes their meshes, in mm, with their codes). ``export_rig``
writes the FaceScape expressions of one identity on one shared topology: a mesh per expression and
one GLB with morph targets (``python -m imface rig``). Both commands: imface/commands.py.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import torch

from imface.errors import UserError
from imface.model import Codes, ImFace
from imface.paths import atomic_write_bytes, atomic_write_text, confined, safe_name
from imface.units import GLTF_UNIT, MM_PER_UNIT, UNITS

# The 20 FaceScape expressions (1_neutral and 19 more); training corpora may hold other labels
# (FaceScape's "21_random", ...) that are no named expression and stay out of rigs.
FACESCAPE_EXPRESSIONS = (
    "1_neutral", "2_smile", "3_mouth_stretch", "4_anger", "5_jaw_left", "6_jaw_right",
    "7_jaw_forward", "8_mouth_left", "9_mouth_right", "10_dimpler", "11_chin_raiser",
    "12_lip_puckerer", "13_lip_funneler", "14_sadness", "15_lip_roll", "16_grin",
    "17_cheek_blowing", "18_eye_closed", "19_brow_raiser", "20_brow_lower",
)  # fmt: skip
MESH_UNIT = "mm"  # OBJ / PLY / STL carry no unit: millimetres, recorded in the sidecar
FRAME = "model frame: y up, face looking +z, origin 40 mm behind the nose tip"


def file_unit(path: str | Path) -> str:
    """The unit a face is written in: metres for glTF (its specification), else millimetres."""
    return GLTF_UNIT if Path(path).suffix.lower() in (".glb", ".gltf") else MESH_UNIT


def to_file_unit(vertices_model: np.ndarray, unit: str) -> np.ndarray:
    return np.asarray(vertices_model, np.float64) * (MM_PER_UNIT / 1000.0 / UNITS[unit])


def write_face(path, vertices_model, faces, colors=None, info: dict | None = None) -> dict:
    """Write a face given in model units, in its format's unit, with a sidecar PATH.json that
    records the unit and the frame. Returns the sidecar's content."""
    from imface.io import save_mesh

    path = Path(path)
    unit = file_unit(path)
    has_colors = colors is not None and path.suffix.lower() != ".stl"
    if has_colors and unit == GLTF_UNIT:  # glTF vertex colours (COLOR_0) are linear, ours sRGB
        colors = np.round(srgb_to_linear(_as_uint8(colors)) * 255).astype(np.uint8)
    save_mesh(path, to_file_unit(vertices_model, unit), faces, colors=colors if has_colors else None)
    sidecar = {
        "mesh": path.name,
        "unit": unit,
        "unit_name": {"m": "metres", "mm": "millimetres"}[unit],
        "frame": FRAME,
        "vertices": int(len(vertices_model)),
        "colors": bool(has_colors),
        **({"color_space": "linear (glTF COLOR_0)" if unit == GLTF_UNIT else "sRGB"} if has_colors else {}),
        **(info or {}),
    }
    _write_json(path.with_name(path.name + ".json"), sidecar)
    return sidecar


def _as_uint8(colors) -> np.ndarray:
    colors = np.asarray(colors)
    return colors if colors.dtype == np.uint8 else np.clip(np.round(colors * 255), 0, 255).astype(np.uint8)


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


# -- sampling -------------------------------------------------------------------------------------
def sample_faces(checkpoint, n: int, scale: float = 0.85, seed: int = 0) -> list[Codes]:
    """n random faces: identity and expression codes from mean + scale * std * N(0, 1) along the
    principal directions of the training codes (NPHM uses scale 0.85)."""
    gen = torch.Generator().manual_seed(seed)
    stats = checkpoint.stats
    z_id = stats["id"].sample(n, scale, gen)
    z_exp = stats["exp"].sample(n, scale, gen)
    return [Codes(z_id[i], z_exp[i]) for i in range(n)]


def expression_codes(checkpoint) -> dict[str, torch.Tensor]:
    """One expression code per named FaceScape expression (2_smile ... 20_brow_lower): the mean of
    the training codes with that label, in the label's order."""
    labels = checkpoint.codes.expression_labels
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        if label in FACESCAPE_EXPRESSIONS and label != "1_neutral":
            groups.setdefault(label, []).append(i)
    if not groups:
        raise UserError("this checkpoint has no codes labelled with FaceScape expressions: no rig to build")
    z = checkpoint.codes.z_exp
    ordered = sorted(groups, key=_label_order)
    return {label: z[groups[label]].mean(0) for label in ordered}


def _label_order(label: str):
    match = re.match(r"(\d+)_", label)
    return (int(match.group(1)) if match else 10_000, label)


# -- the rig ----------------------------------------------------------------------------------
def transfer_codes(target: Codes, expression: Codes, expression_neutral: Codes | None = None) -> Codes:
    """The target face with another face's expression. Without that face's neutral: the target's
    identity code with its expression code. With it: the target's codes plus the expression
    face's code offset from its neutral (both codes), as a linear 3DMM transfers an expression;
    the offset also carries what the expression fit put into the identity code, which the
    expression code alone loses (the README's expression-transfer figures)."""
    if expression_neutral is None:
        return Codes(target.z_id, expression.z_exp)
    return Codes(
        target.z_id + expression.z_id - expression_neutral.z_id,
        target.z_exp + expression.z_exp - expression_neutral.z_exp,
    )


def build_rig(model: ImFace, z_id: torch.Tensor, expressions: dict[str, torch.Tensor], resolution: int = 128):
    """Neutral mesh plus every expression on the neutral mesh's topology (fixed-topology morph).

    Returns (neutral vertices, faces, {label: vertices}, {label: vertices that failed to converge}).
    """
    from imface.extract import MorphEngine, face_mesh

    neutral = Codes(z_id, torch.zeros(model.config.exp_dim), torch.tensor([True]))
    mesh = face_mesh(model, neutral, resolution)
    engine = MorphEngine(model, mesh, neutral)
    targets, failures = {}, {}
    for label, z_exp in expressions.items():
        result = engine.morph(Codes(z_id, z_exp))
        targets[label] = np.asarray(result.vertices)
        failures[label] = int(result.failed)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces), targets, failures


def write_glb_with_morph_targets(
    path: Path, base: np.ndarray, faces: np.ndarray, targets: dict, colors: np.ndarray | None = None
) -> Path:
    """A glTF 2.0 binary: one mesh, its morph targets (position offsets) named in extras.targetNames,
    and optional sRGB uint8 vertex colours (COLOR_0). Positions in metres (the glTF unit)."""
    base = np.ascontiguousarray(base, dtype=np.float32)
    blobs = [base.tobytes(), np.ascontiguousarray(faces, dtype=np.uint32).tobytes()]
    deltas = [np.ascontiguousarray(np.asarray(v, np.float32) - base) for v in targets.values()]
    blobs += [d.tobytes() for d in deltas]
    if colors is not None:  # COLOR_0 is linear RGB in glTF: convert from sRGB
        blobs.append(np.ascontiguousarray(srgb_to_linear(colors), dtype=np.float32).tobytes())
    views, offset = [], 0
    for blob in blobs:
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(blob)})
        offset += len(blob)  # float32 / uint32 blobs keep 4-byte alignment

    def accessor(view, array, kind):
        entry = {"bufferView": view, "count": len(array)}
        if kind == "SCALAR":
            entry.update(componentType=5125, type="SCALAR")  # uint32 indices
        else:
            entry.update(
                componentType=5126, type="VEC3", min=array.min(0).tolist(), max=array.max(0).tolist()
            )
        return entry

    accessors = [accessor(0, base, "VEC3"), accessor(1, np.asarray(faces).reshape(-1), "SCALAR")]
    accessors += [accessor(2 + k, d, "VEC3") for k, d in enumerate(deltas)]
    attributes = {"POSITION": 0}
    if colors is not None:
        attributes["COLOR_0"] = len(accessors)
        accessors.append(
            {"bufferView": len(accessors), "count": len(base), "componentType": 5126, "type": "VEC3"}
        )
    document = {
        "asset": {"version": "2.0", "generator": "imface"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "face"}],
        "meshes": [
            {
                "name": "face",
                "primitives": [
                    {
                        "attributes": attributes,
                        "indices": 1,
                        "targets": [{"POSITION": 2 + k} for k in range(len(deltas))],
                    }
                ],
                "weights": [0.0] * len(deltas),
                "extras": {"targetNames": list(targets)},
            }
        ],
        "buffers": [{"byteLength": offset}],
        "bufferViews": views,
        "accessors": accessors,
    }
    json_chunk = json.dumps(document, separators=(",", ":")).encode()
    json_chunk += b" " * (-len(json_chunk) % 4)
    bin_chunk = b"".join(blobs)
    bin_chunk += b"\0" * (-len(bin_chunk) % 4)
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    header = struct.pack("<III", 0x46546C67, 2, total)
    json_part = struct.pack("<II", len(json_chunk), 0x4E4F534A) + json_chunk
    bin_part = struct.pack("<II", len(bin_chunk), 0x004E4942) + bin_chunk
    atomic_write_bytes(path, header + json_part + bin_part)
    return path


def srgb_to_linear(colors: np.ndarray) -> np.ndarray:
    c = np.asarray(colors, np.float64)[:, :3] / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def export_rig(
    model,
    z_id,
    expressions,
    out_dir: str | Path,
    resolution: int = 128,
    fmt: str = "obj",
    albedo=None,
    detail=None,
) -> dict:
    """Write 1_neutral.<fmt> and <label>.<fmt> per expression (mm; GLB in m) and rig.glb (m) with
    one morph target per expression; rig.json records every file's unit. With an albedo, every
    mesh carries the same vertex colours: the rig keeps one topology whose vertices keep their
    template points, so the colours of the neutral face hold for every expression. A fitted
    person's detail (DetailMap) moves every mesh along its normals by the same per-vertex offsets."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base, faces, targets, failures = build_rig(model, z_id, expressions, resolution)
    neutral = Codes(z_id, torch.zeros(model.config.exp_dim), torch.tensor([True]))
    colors = None
    if albedo is not None:
        from imface.appearance import colours_for
        from imface.correspond import template_coordinates

        colors = colours_for(lambda p: template_coordinates(model, neutral, p), base, albedo)
    if detail is not None:  # one offset per vertex: every target keeps its template points
        from imface.correspond import template_coordinates
        from imface.fit.refine import along_normals

        offsets = detail.lookup(template_coordinates(model, neutral, base))
        base = along_normals(base, faces, offsets)
        targets = {k: along_normals(v, faces, offsets) for k, v in targets.items()}
    suffix = f".{fmt}"
    write_face(out / f"1_neutral{suffix}", base, faces, colors)
    names = rig_file_names(targets)  # labels come from the checkpoint: never trust them as paths
    for label, vertices in targets.items():
        write_face(confined(out, f"{names[label]}{suffix}"), vertices, faces, colors)
    metres = MM_PER_UNIT / 1000.0 / UNITS[GLTF_UNIT]
    write_glb_with_morph_targets(
        out / "rig.glb", base * metres, faces, {k: v * metres for k, v in targets.items()}, colors
    )
    manifest = {
        "units": {fmt: file_unit(suffix), "glb": GLTF_UNIT},
        "frame": FRAME,
        "vertices": int(len(base)),
        "meshes": 1 + len(targets),
        "morph_targets": len(targets),
        "expressions": list(targets),
        "unconverged_vertices": failures,
        "colors": "vertex colours from the albedo" if colors is not None else "none",
        "detail": detail.describe() if detail is not None else "none",
    }
    atomic_write_text(out / "rig.json", json.dumps(manifest, indent=2))
    return manifest


def rig_file_names(labels) -> dict[str, str]:
    """A safe file stem per expression label, unique and distinct from the neutral face and the
    rig files ("2_smile" stays "2_smile"; "../x" becomes "_x")."""
    used = {"1_neutral", "rig"}
    names = {}
    for label in labels:
        stem = base = safe_name(label, fallback="expression")
        n = 2
        while stem in used:
            stem, n = f"{base}-{n}", n + 1
        used.add(stem)
        names[label] = stem
    return names
