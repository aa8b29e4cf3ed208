"""Image-based appearance on a synthetic person: PSNR / SSIM on held-out views and on a held-out
expression for the template-space radiance field, the same field over observation-space points
(ablation) and the projection baseline (training images projected onto the mesh as vertex colours,
moved to the expression by template coordinates). Times per step and per rendered image.

    python benchmarks/appearance.py [--size 256] [--views 24] [--steps 1200] [--code-steps 50]
        [--data DIR] [--out benchmarks/results/appearance_2core_cpu.json] [--figure FIGURE.png]

Prints JSON lines, writes the summary JSON. Timings on a shared machine are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import describe as describe_machine
from skimage.metrics import structural_similarity

from imface.appearance.projection import project_colours, render_vertex_colours, transfer_by_template
from imface.appearance.radiance import FieldConfig, load_appearance, shell_mesh
from imface.appearance.training import TrainOptions, train_job
from imface.appearance.transforms import read_transforms, write_png
from imface.appearance.views import synth_job
from imface.jobs import drive
from imface.session import FaceCodes, Session


def psnr(a, b, mask=None) -> float:
    err = (np.asarray(a, np.float64) - b) ** 2
    mse = err[mask].mean() if mask is not None else err.mean()
    return float(-10 * np.log10(max(mse, 1e-12)))


def scores(renders, views) -> dict:
    masks = views.alpha > 0.5
    return {
        "psnr": round(float(np.mean([psnr(r, g) for r, g in zip(renders, views.images, strict=True)])), 2),
        "psnr_face": round(
            float(np.mean([psnr(r, g, m) for r, g, m in zip(renders, views.images, masks, strict=True)])), 2
        ),
        "ssim": round(
            float(
                np.mean(
                    [
                        structural_similarity(r, g, channel_axis=2, data_range=1.0)
                        for r, g in zip(renders, views.images, strict=True)
                    ]
                )
            ),
            4,
        ),
    }


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def field_renders(session, field, codes, views) -> tuple[list, float]:
    mesh = shell_mesh(session, codes)
    images, seconds = [], []
    for cam in views.cameras:
        start = time.perf_counter()
        images.append(field.render(session, codes, cam, mesh)[0])
        seconds.append(time.perf_counter() - start)
    return images, float(np.mean(seconds))


def evaluate_field(session, work, space, steps, args, codes, expression, train, test, expr):
    """Train (or reuse work/field_SPACE) and render (or reuse work/renders_SPACE, as written by
    `appearance render --expressions neutral,EXPR`) the held-out views and expression."""
    folder, renders = work / f"field_{space}", work / f"renders_{space}"
    if (folder / "appearance.json").is_file():
        field = load_appearance(folder, session)
    else:
        options = TrainOptions(steps=steps, code_steps=args.code_steps, rays=args.rays, seed=args.seed)
        field = drive(train_job(work, session, codes, folder, FieldConfig(space=space), options, train)).field
    smile = FaceCodes(field.codes.z_id.copy(), np.asarray(expression["z_exp"], np.float32), neutral=False)
    if (renders / "render.json").is_file():
        test_images = [_png(renders / "neutral" / f"r_{i}.png") for i in range(len(test))]
        expr_images = [_png(renders / expression["expression"] / f"r_{i}.png") for i in range(len(expr))]
        per_image = json.loads((renders / "render.json").read_text())["seconds_per_image"]
    else:
        test_images, per_image = field_renders(session, field, field.codes, test)
        expr_images, _ = field_renders(session, field, smile, expr)
    info = field.info
    record = {
        "method": f"radiance field, {space}-space colour",
        "held_out_views": scores(test_images, test),
        "held_out_expression": scores(expr_images, expr),
        "train_seconds": info["train_seconds"],
        "geometry_seconds": info["geometry_seconds"],
        "colour_seconds_per_step": info["colour_seconds_per_step"],
        "steps": info["steps"],
        "projected_base": field.config.projected_base,
        "code_steps": info.get("code_steps"),
        "seconds_per_image": round(per_image, 2),
    }
    return record, [test_images[1], expr_images[1]]


def _png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        rgba = np.asarray(img.convert("RGBA"), np.float64) / 255.0
    return rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])  # over white, as the ground truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--code-steps", type=int, default=50)
    ap.add_argument("--observation-steps", type=int, help="colour steps of the ablation (default: --steps)")
    ap.add_argument("--rays", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", help="reuse or keep the synthetic set here (default: a temporary folder)")
    ap.add_argument("--out", default="benchmarks/results/appearance_2core_cpu.json")
    ap.add_argument("--note", default="", help="free text stored in the JSON (how the run was made)")
    ap.add_argument("--figure", help="PNG: ground truth | template field | observation field | baseline")
    args = ap.parse_args()
    session = Session.load()
    work = Path(args.data or tempfile.mkdtemp(prefix="appearance-bench-"))
    start, synth_seconds = time.perf_counter(), None
    if not (work / "transforms_expression.json").is_file():
        drive(synth_job(session, work, args.views, args.size, args.seed))
        synth_seconds = round(time.perf_counter() - start, 1)
    train = read_transforms(work / "transforms_train.json")
    test = read_transforms(work / "transforms_test.json")
    expr = read_transforms(work / "transforms_expression.json")
    codes = FaceCodes.from_json(json.loads((work / "codes.json").read_text()))
    expression = json.loads((work / "codes_expression.json").read_text())
    result = {
        "benchmark": "appearance",
        "machine": describe_machine(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "data": f"synthetic: {args.views} train views, {len(test)} held-out views, {len(expr)} views of the "
        f"held-out expression {expression['expression']}, {args.size}x{args.size}, seed {args.seed}",
        "codes": "the person's true codes given (--codes), "
        + (f"refined jointly ({args.code_steps} steps)" if args.code_steps else "kept (baseline's geometry)"),
        "white_background": "PSNR and SSIM over the whole image (white background included); psnr_face "
        "over the true silhouette",
        "synth_seconds": synth_seconds,  # None: the set was made before (see "note")
        "note": args.note,
        "methods": {},
    }
    figure = {"truth": [test.images[1], expr.images[1]]}
    for space in ("template", "observation"):
        steps = args.steps if space == "template" else args.observation_steps or args.steps
        record, images = evaluate_field(
            session, work, space, steps, args, codes, expression, train, test, expr
        )
        emit(record)
        result["methods"][space] = record
        figure[space] = images
    start = time.perf_counter()
    mesh = shell_mesh(session, codes)
    colours = project_colours(mesh, train)
    fit_seconds = time.perf_counter() - start
    smile_codes = FaceCodes(codes.z_id.copy(), np.asarray(expression["z_exp"], np.float32), neutral=False)
    smile_mesh = shell_mesh(session, smile_codes)
    smile_colours = transfer_by_template(
        session.template_coordinates(codes, mesh.vertices),
        colours,
        session.template_coordinates(smile_codes, smile_mesh.vertices),
    )
    start = time.perf_counter()
    test_images = [render_vertex_colours(mesh, colours, c)[0] for c in test.cameras]
    per_image = (time.perf_counter() - start) / len(test)
    expr_images = [render_vertex_colours(smile_mesh, smile_colours, c)[0] for c in expr.cameras]
    record = {
        "method": "projection baseline (vertex colours on the 128^3 mesh, template-space transfer)",
        "held_out_views": scores(test_images, test),
        "held_out_expression": scores(expr_images, expr),
        "train_seconds": round(fit_seconds, 2),
        "vertices": int(len(mesh.vertices)),
        "seconds_per_image": round(per_image, 2),
    }
    emit(record)
    result["methods"]["projection_baseline"] = record
    figure["projection_baseline"] = [test_images[1], expr_images[1]]
    result["load_average_at_end"] = round(os.getloadavg()[0], 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    if args.figure:
        columns = [
            np.concatenate(figure[k], 0) for k in ("truth", "template", "observation", "projection_baseline")
        ]
        write_png(args.figure, np.concatenate(columns, 1))
    emit({"summary": args.out, "work": str(work)})


if __name__ == "__main__":
    main()
