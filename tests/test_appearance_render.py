"""Renderer (cameras, rays, rasteriser, shell compositing) against a known scene, transforms.json
errors, and a tiny end-to-end train / render of the radiance field."""

import json

import numpy as np
import pytest
import torch
import trimesh

from imface.appearance.render import (
    Camera,
    Shell,
    look_at,
    rasterise,
    render_image,
    shell_centres,
)

RADIUS = 0.5
DISTANCE = 3.0
RED = (0.8, 0.2, 0.1)


def _camera(size=64, fov=0.6, eye=(0.0, 0.0, DISTANCE)):
    return Camera.from_fov(look_at(eye), fov, size, size)


def _sphere(points):
    return points.norm(dim=-1) - RADIUS, points


def _red(coords, directions):
    return torch.tensor(RED).expand(coords.shape[0], 3)


def test_principal_ray_goes_through_the_image_centre():
    cam = _camera(size=64)
    d = cam.directions().reshape(64, 64, 3)
    centre = d[31:33, 31:33].mean((0, 1))
    assert np.allclose(centre / np.linalg.norm(centre), [0, 0, -1], atol=1e-6)
    assert d[0, 0, 0] < 0 and d[0, 0, 1] > 0  # top-left pixel looks left and up
    (uv,), (depth,) = cam.project(np.array([[0.0, 0.0, 0.0]]))
    assert np.allclose(uv, [32, 32]) and np.isclose(depth, DISTANCE)
    # a point on the x axis lands right of the centre, on the y axis above it (rows go down)
    uv, _ = cam.project(np.array([[0.3, 0.0, 0.0], [0.0, 0.3, 0.0]]))
    assert uv[0, 0] > 32 and np.isclose(uv[0, 1], 32) and uv[1, 1] < 32
    expected = 32 + cam.focal * 0.3 / DISTANCE
    assert np.isclose(uv[0, 0], expected)


def test_camera_angle_round_trips_and_side_camera_looks_at_origin():
    cam = _camera(size=100, fov=0.7)
    assert np.isclose(cam.camera_angle_x, 0.7)
    side = _camera(eye=(4.0, 0.0, 0.0))
    (uv,), (depth,) = side.project(np.array([[0.0, 0.0, 0.0]]))
    assert np.allclose(uv, [32, 32]) and np.isclose(depth, 4.0)


def test_sphere_of_known_colour_renders_the_known_disc():
    size = 64
    cam = _camera(size=size)
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=RADIUS)
    hits = rasterise(mesh.vertices, mesh.faces, cam)
    shell = Shell()
    centres = shell_centres(hits, cam, shell.band_px)
    image, alpha = render_image(_sphere, _red, cam, centres, shell, background=(1.0, 1.0, 1.0))
    # the silhouette of a sphere seen from distance D has angular radius asin(r / D)
    radius_px = cam.focal * np.tan(np.arcsin(RADIUS / DISTANCE))
    cols, rows = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    r = np.hypot(cols - size / 2, rows - size / 2)
    inside, outside = r < radius_px - 1.0, r > radius_px + 1.0
    assert np.allclose(image[inside], RED, atol=0.03)
    assert np.allclose(image[outside], 1.0, atol=1e-3)
    assert (alpha[inside] > 0.95).all() and (alpha[outside] < 0.02).all()
    # the disc's area matches the analytic radius to within a ring of one pixel
    assert abs(alpha.sum() - np.pi * radius_px**2) < 2 * np.pi * radius_px


def test_rasteriser_depth_and_barycentrics_of_a_known_triangle():
    cam = _camera(size=32)
    vertices = np.array([[-1.0, -1.0, 0.5], [1.0, -1.0, 0.5], [0.0, 1.0, 0.5]])
    hits = rasterise(vertices, np.array([[0, 1, 2]]), cam)
    centre = 16 * 32 + 16
    assert hits.triangle[centre] == 0
    d = cam.directions()[centre]
    point = cam.centre + hits.t[centre] * d
    assert np.isclose(point[2], 0.5, atol=1e-9)
    assert np.allclose(hits.bary[centre] @ vertices, point, atol=1e-9)
    assert not hits.hit[0]  # the top-left corner ray passes beside the triangle


# -- transforms.json --------------------------------------------------------------------------------
def _write_set(folder, frames=None, angle=0.6, size=(8, 8), mode="RGBA"):
    from PIL import Image

    (folder / "train").mkdir(parents=True, exist_ok=True)
    frames = (
        frames
        if frames is not None
        else [{"file_path": "./train/r_0", "transform_matrix": np.eye(4).tolist()}]
    )
    for i, _ in enumerate(frames):
        Image.new(mode, size, (10, 20, 30, 255)[: len(mode)]).save(folder / "train" / f"r_{i}.png")
    path = folder / "transforms_train.json"
    path.write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    return path


def test_transforms_round_trip_with_alpha_as_silhouette(tmp_path):
    from imface.appearance.transforms import find_transforms, read_transforms, write_png, write_transforms

    cams = [Camera.from_fov(look_at((0, 0, 3)), 0.5, 6, 4), Camera.from_fov(look_at((3, 0, 0)), 0.5, 6, 4)]
    rgb = np.full((4, 6, 3), 0.25)
    alpha = np.zeros((4, 6))
    alpha[1:3, 2:4] = 1.0
    for i in range(2):
        write_png(tmp_path / "train" / f"r_{i}.png", rgb, alpha)
    write_transforms(tmp_path / "transforms_train.json", cams, ["./train/r_0", "train/r_1.png"], {"note": 1})
    views = read_transforms(find_transforms(tmp_path), background=(1.0, 1.0, 1.0))
    assert len(views) == 2 and views.images.shape == (2, 4, 6, 3) and views.extra["note"] == 1
    assert np.allclose(views.alpha[0], alpha) and np.allclose(views.images[0, 0, 0], 1.0)
    assert np.allclose(views.images[0, 1, 2], 64 / 255)
    assert np.allclose(views.cameras[1].c2w, cams[1].c2w) and np.isclose(
        views.cameras[0].focal, cams[0].focal
    )


BAD_SETS = {
    "bad JSON": (lambda p: p.write_text("{nope"), "not valid JSON"),
    "no angle": (lambda p: p.write_text(json.dumps({"frames": []})), "camera_angle_x"),
    "no frames": (lambda p: p.write_text(json.dumps({"camera_angle_x": 0.5, "frames": []})), "'frames'"),
    "3x4 matrix": ({"file_path": "train/r_0", "transform_matrix": np.eye(4)[:3].tolist()}, "4x4"),
    "NaN": ({"file_path": "train/r_0", "transform_matrix": [[float("nan")] * 4] * 4}, "NaN"),
    "strings": ({"file_path": "train/r_0", "transform_matrix": [["a"] * 4] * 4}, "4x4"),
    "singular": ({"file_path": "train/r_0", "transform_matrix": np.zeros((4, 4)).tolist()}, "rigid"),
    "missing image": ({"file_path": "train/r_9", "transform_matrix": np.eye(4).tolist()}, "not found"),
    "escape": ({"file_path": "../outside", "transform_matrix": np.eye(4).tolist()}, "outside"),
    "no file_path": ({"transform_matrix": np.eye(4).tolist()}, "file_path"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETS))
def test_transforms_errors_are_one_line_naming_the_file(tmp_path, case):
    from imface.appearance.transforms import read_transforms
    from imface.errors import UserError

    spoil, expected = BAD_SETS[case]
    if callable(spoil):
        path = _write_set(tmp_path)
        spoil(path)
    else:
        path = _write_set(tmp_path, frames=[spoil])
    with pytest.raises(UserError) as err:
        read_transforms(path)
    message = str(err.value)
    assert (
        "\n" not in message
        and expected in message
        and ("transforms_train.json" in message or case == "escape")
    )


def test_images_of_different_sizes_or_unreadable_are_refused(tmp_path):
    from PIL import Image

    from imface.appearance.transforms import read_transforms
    from imface.errors import UserError

    frames = [{"file_path": f"train/r_{i}", "transform_matrix": np.eye(4).tolist()} for i in range(2)]
    path = _write_set(tmp_path, frames=frames)
    Image.new("RGBA", (9, 8)).save(tmp_path / "train" / "r_1.png")
    with pytest.raises(UserError, match="9x8 pixels, the first image is 8x8"):
        read_transforms(path)
    (tmp_path / "train" / "r_1.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="r_1.png: not a readable image"):
        read_transforms(path)
    with pytest.raises(UserError, match="no such file"):
        read_transforms(tmp_path / "missing.json")


# -- end to end on a tiny model ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(face_model, tmp_path_factory):
    from imface.io import TrainedCodes, save_checkpoint

    cfg = face_model.config
    gen = torch.Generator().manual_seed(0)
    codes = TrainedCodes(
        z_id=torch.randn(2, cfg.id_dim, generator=gen) * 0.3,
        z_exp=torch.randn(2, cfg.exp_dim, generator=gen) * 0.3,
        identity_labels=["001", "002"],
        expression_labels=["2_smile", "3_mouth_stretch"],
    )
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors", face_model, codes, {"step": 1})


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_synth_train_render_end_to_end(tiny_checkpoint, tmp_path, capsys):
    from imface.appearance.radiance import FieldConfig, load_appearance
    from imface.appearance.training import TrainOptions, train_job
    from imface.appearance.transforms import read_transforms
    from imface.cli import main
    from imface.jobs import drive
    from imface.session import FaceCodes, Session

    data, ckpt = tmp_path / "data", ["--checkpoint", str(tiny_checkpoint)]
    assert main(["appearance", "synth", "--out", str(data), "--views", "4", "--size", "32", *ckpt]) == 0
    files = _files(data)
    assert "transforms_train.json" in files and "expression/r_5.png" in files and "codes.json" in files
    views = read_transforms(data / "transforms_train.json")
    assert len(views) == 4 and views.alpha is not None and 0.05 < views.alpha.mean() < 0.9

    # the job directly: from grey the photometric loss goes down; from the images projected onto
    # the face it starts far lower and the learnt correction only improves on it
    session = Session.load(tiny_checkpoint)
    codes = FaceCodes.from_json(json.loads((data / "codes.json").read_text()))
    options = TrainOptions(steps=100, code_steps=4, rays=512)

    def train(folder, config=None) -> tuple[list[float], object]:
        records = []
        result = drive(train_job(data, session, codes, folder, config, options), records.append)
        return [r.values["mse"] for r in records if "mse" in r.values], result

    grey, _ = train(tmp_path / "grey", FieldConfig(projected_base=False))
    assert grey[-1] < 0.5 * grey[0], grey
    mse, result = train(tmp_path / "app")
    assert mse[0] < 0.2 * grey[0] and mse[-1] <= mse[0], (mse, grey)
    assert result.report["steps"] == 100 and (tmp_path / "app" / "appearance.json").is_file()
    field = load_appearance(tmp_path / "app", session)
    camera = views.cameras[0]
    before = result.field.render(session, field.codes, camera)
    after = field.render(session, field.codes, camera)
    assert np.allclose(before[0], after[0], atol=1e-5)  # the base travels with the weights
    assert not np.array_equal(field.codes.z_id, codes.z_id)  # refined, a little
    assert np.abs(field.codes.z_id - codes.z_id).max() < 0.05

    # the CLI renders novel views and an expression, writing nothing outside --out
    out = tmp_path / "renders"
    before = _files(tmp_path)
    args = [
        "appearance",
        "render",
        str(tmp_path / "app"),
        "--out",
        str(out),
        "--expressions",
        "neutral,2_smile",
    ]
    assert main([*args, "--size", "24", *ckpt]) == 0
    written = _files(out)
    pngs = sorted(f"{e}/r_{i}.png" for e in ("neutral", "2_smile") for i in range(6))
    assert written == sorted(pngs + ["render.json"])
    assert _files(tmp_path) == sorted(before + [f"renders/{w}" for w in written])
    assert main([*args[:-1], "9_nonsense", *ckpt]) == 1
    assert "unknown expression '9_nonsense'" in capsys.readouterr().err
