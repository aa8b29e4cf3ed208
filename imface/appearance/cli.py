"""``python -m imface appearance synth|train|render``: the image-based radiance field.

    python -m imface appearance synth --out faces/synth --views 24 --size 256
    python -m imface appearance train faces/synth --codes faces/synth/codes.json --out synth.appearance
    python -m imface appearance render synth.appearance --out renders \\
        --views faces/synth/transforms_test.json --expressions all
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from imface.errors import UserError

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


def add_arguments(parser) -> None:
    from imface.appearance.training import TrainOptions
    from imface.io import DEFAULT_CHECKPOINT

    sub = parser.add_subparsers(dest="appearance_command", metavar="ACTION", required=True)
    synth = sub.add_parser("synth", help="render a synthetic multi-view set of one coloured face")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--views", type=int, default=24, help="training views")
    synth.add_argument("--size", type=int, default=256, help="image width and height in pixels")
    synth.add_argument("--seed", type=int, default=0, help="seed of the person, albedo and cameras")
    synth.add_argument("--expression", default="2_smile", help="the held-out expression")

    train = sub.add_parser("train", help="fit the radiance field to images with cameras (transforms.json)")
    train.add_argument("images", help="folder with transforms_train.json or transforms.json, or the file")
    train.add_argument("--out", required=True, help="output folder of the appearance")
    train.add_argument("--codes", help="codes JSON of the person (fit --codes, synth's codes.json)")
    train.add_argument("--scan", help="a scan of the person, fitted first (cameras in the scan's frame)")
    train.add_argument("--steps", type=int, default=TrainOptions.steps, help="colour steps")
    train.add_argument(
        "--code-steps",
        type=int,
        default=TrainOptions.code_steps,
        help="joint code-refinement steps (0: keep the codes, best when they are right)",
    )
    train.add_argument("--rays", type=int, default=TrainOptions.rays, help="rays per step")
    train.add_argument("--time-limit", type=float, help="seconds for the colour stage")
    train.add_argument(
        "--space",
        default="template",
        choices=("template", "observation"),
        help="colour over template coordinates (follows the codes) or observation points (ablation)",
    )
    train.add_argument(
        "--background",
        default="white",
        choices=tuple(BACKGROUNDS),
        help="colour behind the face (RGBA images)",
    )
    train.add_argument(
        "--no-projected-base",
        dest="projected_base",
        action="store_false",
        help="learn the colour from grey instead of from the images projected onto the face",
    )

    render = sub.add_parser("render", help="render novel views and expressions of a trained appearance")
    render.add_argument("appearance", help="folder written by appearance train")
    render.add_argument("--out", required=True, help="output folder (one sub-folder per expression)")
    render.add_argument("--views", help="transforms JSON with the cameras (default: 6 views around the face)")
    render.add_argument("--expressions", default="neutral", help="neutral, all, or names (2_smile,...)")
    render.add_argument("--size", type=int, help="image width in pixels (default: the cameras' own)")
    for p in (synth, train, render):
        p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="model checkpoint")


def run(args) -> int:
    from imface.session import Session

    session = Session.load(args.checkpoint)
    action = {"synth": _synth, "train": _train, "render": _render}[args.appearance_command]
    summary = action(args, session)
    print(json.dumps(summary))
    return 0


def _synth(args, session) -> dict:
    from imface.appearance.views import synth_job
    from imface.jobs import drive_with_tqdm

    return drive_with_tqdm(synth_job(session, args.out, args.views, args.size, args.seed, args.expression))


def _train(args, session) -> dict:
    from imface.appearance.radiance import FieldConfig
    from imface.appearance.training import TrainOptions, train_job
    from imface.appearance.transforms import find_transforms, read_transforms
    from imface.jobs import drive_with_tqdm

    config = FieldConfig(
        space=args.space, background=BACKGROUNDS[args.background], projected_base=args.projected_base
    )
    views = read_transforms(find_transforms(args.images), config.background)
    codes = _person_codes(args, session, views)
    options = TrainOptions(
        steps=args.steps, code_steps=args.code_steps, rays=args.rays, time_limit=args.time_limit
    )
    result = drive_with_tqdm(train_job(args.images, session, codes, args.out, config, options, views))
    return {"out": str(result.folder), **result.report}


def _person_codes(args, session, views):
    """Codes from --codes, from fitting --scan (its alignment also moves the cameras into the
    model frame), or the mean face."""
    from imface.session import FaceCodes

    if args.codes and args.scan:
        raise UserError("give --codes or --scan, not both")
    if args.codes:
        try:
            return FaceCodes.from_json(json.loads(Path(args.codes).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{args.codes}: not a codes file ({exc})") from None
    if args.scan:
        from imface.jobs import drive_with_tqdm

        loaded = drive_with_tqdm(session.load_scan_job(args.scan))
        outcome = drive_with_tqdm(session.fit_job(loaded))
        _cameras_to_model(views, outcome.alignment)
        return outcome.codes
    return session.mean_codes()


def _cameras_to_model(views, alignment) -> None:
    from imface.appearance.render import Camera

    for i, cam in enumerate(views.cameras):
        c2w = alignment.transform @ cam.c2w
        c2w[:3, :3] /= alignment.scale
        views.cameras[i] = Camera(c2w, cam.focal, cam.width, cam.height)


def _render(args, session) -> dict:
    from imface.appearance.radiance import expression_faces, load_appearance, render_job
    from imface.appearance.transforms import read_transforms
    from imface.appearance.views import test_cameras
    from imface.jobs import drive_with_tqdm

    field = load_appearance(args.appearance, session)
    if args.views:
        cameras = read_transforms(args.views, load_images=False).cameras
        if cameras[0].width == 0 and not args.size:
            raise UserError(f"{args.views}: no image size ('w', 'h'): give --size")
    else:
        cameras = test_cameras(args.size or 256)
    if args.size:
        if not 8 <= args.size <= 4096:
            raise UserError("--size must be 8..4096 pixels")
        cameras = [_resized(c, args.size) for c in cameras]
    faces = expression_faces(field, session, args.expressions)
    summary = drive_with_tqdm(render_job(field, session, cameras, faces, args.out))
    return {"out": args.out, "expressions": list(faces), **summary}


def _resized(camera, size: int):
    if camera.width == 0:  # a transforms file without image size: square images of --size
        from imface.appearance.render import Camera

        return Camera.from_fov(camera.c2w, np.pi / 4, size, size)
    return camera.resized(size)
