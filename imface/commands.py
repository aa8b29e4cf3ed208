"""The top-level commands that belong to no stage folder: ``info``, ``eval``, ``correspond``,
``generate`` and ``rig``, each as ``add_<cmd>_arguments(parser)`` and ``run_<cmd>(args)`` (the
table in imface/cli.py lists them). Library code is imported inside the hooks, so a command loads
only what it runs.

    python -m imface info [CKPT]
    python -m imface eval --checkpoint CKPT --corpus CACHE --split test --json OUT
    python -m imface correspond A B --out DIR
    python -m imface generate --n N --out DIR [--scale 0.85] [--seed S]
    python -m imface rig --codes C.json --out DIR
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from imface.errors import UserError
from imface.io import DEFAULT_CHECKPOINT, load_checkpoint
from imface.model import Codes


# -- info: what a checkpoint holds --------------------------------------------------------------
def add_info_arguments(parser) -> None:
    parser.add_argument("checkpoint", nargs="?", default=str(DEFAULT_CHECKPOINT), help="checkpoint file")


def run_info(args) -> int:
    from imface.model import parameter_count

    ckpt = load_checkpoint(args.checkpoint)
    summary = {
        "path": str(ckpt.path),
        "sha256": ckpt.sha256,
        "parameters": parameter_count(ckpt.model),
        "config": ckpt.config.to_dict(),
        "identities": ckpt.codes.z_id.shape[0],
        "expression_codes": ckpt.codes.z_exp.shape[0],
        "detail_codes": 0 if ckpt.codes.z_detail is None else ckpt.codes.z_detail.shape[0],
        "meta": ckpt.meta,
    }
    print(json.dumps(summary, indent=2))
    return 0


# -- eval: imface/evaluate.py on held-out scans; JSON and a markdown table ----------------------
def add_eval_arguments(parser) -> None:
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--corpus", required=True, help="prepared cache (python -m imface prepare)")
    parser.add_argument("--split", choices=["test", "train"], default="test")
    parser.add_argument("--json", required=True, help="output JSON (a .md table is written beside it)")
    parser.add_argument(
        "--test-identities",
        type=float,
        help="re-split (count or fraction); default: people the model never saw",
    )
    parser.add_argument("--identities", type=int, help="evaluate only the first N people of the split")
    parser.add_argument("--people", help="comma-separated identities of the split to evaluate (default: all)")
    parser.add_argument("--expressions", help="comma-separated expression labels (default: all)")
    parser.add_argument("--iterations", type=int, default=150, help="fitting iterations per scan")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--points", type=int, default=150_000, help="points sampled per surface")


def run_eval(args) -> int:
    from imface.config import FitConfig
    from imface.evaluate import FITTING, evaluate_job, markdown
    from imface.jobs import drive_with_tqdm, echo
    from imface.paths import atomic_write_text
    from imface.samples.cache import Corpus

    ckpt = load_checkpoint(args.checkpoint)
    corpus = Corpus.open(args.corpus)
    if args.test_identities is not None:
        train_keys, test_keys = corpus.split(args.test_identities, int(ckpt.meta.get("seed", 0)))
    else:  # the people the checkpoint was not trained on
        train_keys, test_keys = corpus.split_for(ckpt.codes.identity_labels)
    keys = test_keys if args.split == "test" else train_keys
    if args.people:
        wanted = {p.strip() for p in args.people.split(",")}
        keys = [k for k in keys if corpus.record(k)["identity"] in wanted]
    keys = _subset(corpus, keys, args.identities, args.expressions)
    if not keys:
        raise UserError(f"{args.corpus}: no scans in the {args.split} split")
    cfg = FitConfig(iterations=args.iterations, points_per_step=4096)
    job = evaluate_job(ckpt, corpus, keys, train_keys, cfg, args.resolution, args.points)
    summary = drive_with_tqdm(echo(job, lambda p: p.stage == FITTING and p.message))
    summary.update(checkpoint=str(args.checkpoint), sha256=ckpt.sha256, split=args.split)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(summary, indent=2))
    table = markdown(summary)
    atomic_write_text(out.with_suffix(".md"), table)
    print(table)
    return 0


def _subset(corpus, keys: list[str], identities: int | None, expressions: str | None) -> list[str]:
    """The scans of the first `identities` people, with the listed expressions only."""
    if identities:
        people = sorted({corpus.record(k)["identity"] for k in keys})[:identities]
        keys = [k for k in keys if corpus.record(k)["identity"] in people]
    if expressions:
        wanted = {e.strip() for e in expressions.split(",")}
        keys = [k for k in keys if corpus.record(k)["expression"] in wanted]
    return keys


# -- correspond: two faces coloured by template coordinates, and the map between them ----------
def add_correspond_arguments(parser) -> None:
    from imface.correspond import PATTERNS

    parser.add_argument("a", help="codes JSON (fit --codes) or a scan to fit")
    parser.add_argument("b", help="codes JSON (fit --codes) or a scan to fit")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--pattern", default="template", help=f"{', '.join(PATTERNS)} or an image file")
    parser.add_argument("--resolution", type=int, default=128)


def load_codes_json(path: str | Path, checkpoint) -> Codes:
    try:
        data = json.loads(Path(path).read_text())
        z_id = torch.tensor(data["z_id"], dtype=torch.float32)
        z_exp = torch.tensor(data["z_exp"], dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a codes file ({exc})") from None
    cfg = checkpoint.config
    if z_id.shape != (cfg.id_dim,) or z_exp.shape != (cfg.exp_dim,):
        raise UserError(f"{path}: codes do not fit this checkpoint ({cfg.id_dim}/{cfg.exp_dim} dims)")
    return Codes(z_id, z_exp, torch.tensor([bool(data.get("neutral", False))]))


def _face(path: str, checkpoint, resolution: int):
    """(codes, mesh in the model frame) for a codes file or a scan."""
    from imface.extract import face_mesh

    if Path(path).suffix.lower() == ".json":
        codes = load_codes_json(path, checkpoint)
    else:
        from imface.fit.scan import fit_scan

        codes = fit_scan(checkpoint, path, resolution=resolution).codes
    mesh = face_mesh(checkpoint.model, codes, resolution)
    return codes, mesh


def run_correspond(args) -> int:
    import numpy as np

    from imface.correspond import PATTERNS, correspondence, load_texture, paint, template_coordinates
    from imface.io import save_mesh
    from imface.paths import atomic_output, atomic_write_text

    checkpoint = load_checkpoint(args.checkpoint)
    image = None if args.pattern in PATTERNS else load_texture(args.pattern)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    faces = []
    for name, path in (("a", args.a), ("b", args.b)):
        codes, mesh = _face(path, checkpoint, args.resolution)
        template = template_coordinates(checkpoint.model, codes, mesh.vertices)
        save_mesh(out / f"{name}.ply", mesh.vertices, mesh.faces, paint(template, args.pattern, image))
        faces.append(template)
    index, distance = correspondence(faces[0], faces[1])
    with atomic_output(out / "a_to_b.npy") as tmp:
        np.save(tmp, index)
    summary = {"vertices_a": len(faces[0]), "vertices_b": len(faces[1])}
    summary["median_template_distance_mm"] = float(np.median(distance) * 100)
    atomic_write_text(out / "mapping.json", json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


# -- generate and rig: random faces; one identity's expressions (imface/generate.py) -------------
def _common(parser) -> None:
    """The options generate and rig share."""
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="model checkpoint")
    parser.add_argument("--resolution", type=int, default=128, help="marching-cubes grid (per axis)")
    parser.add_argument(
        "--format", choices=["obj", "ply", "stl", "glb"], default="ply",
        help="mesh format: OBJ/PLY/STL in millimetres, GLB in metres (unit also in each PATH.json)",
    )  # fmt: skip
    parser.add_argument(
        "--albedo", help="colour in template space (.albedo.safetensors from fit): meshes get vertex colours"
    )
    parser.add_argument(
        "--detail", help="a fitted person's detail (.detail.safetensors from fit --codes): on every mesh"
    )


def add_generate_arguments(parser) -> None:
    _common(parser)
    parser.add_argument("--n", type=int, default=8, help="number of faces")
    parser.add_argument("--scale", type=float, default=0.85, help="std multiplier of the sampling")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--neutral", action="store_true", help="identities only (neutral expression)")


def run_generate(args) -> int:
    from imface.extract import face_mesh
    from imface.generate import file_unit, sample_faces, write_face
    from imface.paths import atomic_write_text

    checkpoint = load_checkpoint(args.checkpoint)
    albedo, detail = _albedo_argument(args), _detail_argument(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, codes in enumerate(sample_faces(checkpoint, args.n, args.scale, args.seed)):
        if args.neutral:
            codes = Codes(codes.z_id[0], codes.z_exp[0], torch.tensor([True]))
        mesh = face_mesh(checkpoint.model, codes, args.resolution)
        vertices, colors = _dressed(checkpoint.model, codes, mesh, albedo, detail)
        write_face(out / f"face_{i:03d}.{args.format}", vertices, mesh.faces, colors)
        record = {"z_id": codes.z_id[0].tolist(), "z_exp": codes.z_exp[0].tolist(), "neutral": args.neutral}
        record["checkpoint_sha256"] = checkpoint.sha256
        atomic_write_text(out / f"face_{i:03d}.json", json.dumps(record))
    print(json.dumps({"faces": args.n, "out": str(out), "unit": file_unit(f".{args.format}")}))
    return 0


def _detail_argument(args, codes_path: str | None = None):
    """The detail of --detail, else the one a codes file names (fit --codes)."""
    from imface.fit.refine import DetailMap
    from imface.tagged_file import companion_named

    path = getattr(args, "detail", None) or (companion_named(codes_path, "detail") if codes_path else None)
    return DetailMap.load(path) if path else None


def _albedo_argument(args, codes_path: str | None = None):
    """The albedo of --albedo, else the one a codes file names (fit --codes of a coloured scan)."""
    from imface.appearance import Albedo, albedo_for_codes

    if getattr(args, "albedo", None):
        return Albedo.load(args.albedo)
    return albedo_for_codes(codes_path) if codes_path else None


def _dressed(model, codes: Codes, mesh, albedo, detail):
    """(vertices, colours or None) of a face mesh with a person's detail and colour on it: both
    are looked up at the vertices' template coordinates."""
    if albedo is None and detail is None:
        return mesh.vertices, None
    from imface.correspond import template_coordinates
    from imface.fit.refine import along_normals

    template = template_coordinates(model, codes, mesh.vertices)
    vertices = (
        mesh.vertices if detail is None else along_normals(mesh.vertices, mesh.faces, detail.lookup(template))
    )
    colors = None if albedo is None else albedo.lookup(template)
    return vertices, colors


def add_rig_arguments(parser) -> None:
    _common(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--codes", help="codes JSON of a fitted face (from fit --codes)")
    source.add_argument("--identity", type=int, help="index of a training identity")
    parser.add_argument("--expression-from", help="codes JSON whose expression to transfer (one mesh)")
    parser.add_argument(
        "--expression-neutral",
        help="codes JSON of the neutral fit of the --expression-from person: transfer the expression "
        "as that person's code offset from neutral (more accurate)",
    )


def run_rig(args) -> int:
    from imface.extract import face_mesh
    from imface.generate import export_rig, expression_codes, file_unit, transfer_codes, write_face

    checkpoint = load_checkpoint(args.checkpoint)
    albedo, detail = _albedo_argument(args, args.codes), _detail_argument(args, args.codes)
    if args.expression_neutral and not args.expression_from:
        raise UserError("--expression-neutral needs --expression-from (the same person's expression)")
    if args.codes:
        target = load_codes_json(args.codes, checkpoint)
    else:
        if not 0 <= args.identity < checkpoint.codes.z_id.shape[0]:
            raise UserError(
                f"identity {args.identity} out of range (0..{checkpoint.codes.z_id.shape[0] - 1})"
            )
        target = Codes(checkpoint.codes.z_id[args.identity], torch.zeros(checkpoint.config.exp_dim))
    z_id = target.z_id[0]
    if args.expression_from:  # expression transfer: this identity with another face's expression
        expression = load_codes_json(args.expression_from, checkpoint)
        neutral = load_codes_json(args.expression_neutral, checkpoint) if args.expression_neutral else None
        codes = transfer_codes(target, expression, neutral)
        mesh = face_mesh(checkpoint.model, codes, args.resolution)
        path = Path(args.out) / f"transfer.{args.format}"
        vertices, colors = _dressed(checkpoint.model, codes, mesh, albedo, detail)
        write_face(path, vertices, mesh.faces, colors)
        print(json.dumps({"transfer": str(path), "unit": file_unit(path)}))
        return 0
    manifest = export_rig(
        checkpoint.model,
        z_id,
        expression_codes(checkpoint),
        args.out,
        args.resolution,
        args.format,
        albedo,
        detail,
    )
    keys = ("vertices", "meshes", "morph_targets", "expressions", "colors", "detail")
    print(json.dumps({k: manifest[k] for k in keys}))
    return 0
