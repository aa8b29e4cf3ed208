"""Colour in template space (imface.appearance): colour painted on a face stays on the same
template points through expression and identity changes and through the live morph; coloured and
textured scans keep their colours on load and carry them onto the fitted face; albedo files are
checked; exports and rigs carry vertex colours."""

import json
import struct

import numpy as np
import pytest
import trimesh

from imface.appearance import Albedo, albedo_path_for_codes
from imface.cli import main
from imface.config import FitConfig
from imface.errors import UserError
from imface.io import TrainedCodes, save_checkpoint
from imface.jobs import drive
from imface.scan.load import load_scan
from tests.data_fixtures import synth_corpus  # noqa: F401

QUICK_FIT = FitConfig(iterations=6, points_per_step=1024)


def pattern(template: np.ndarray) -> np.ndarray:
    """A smooth colour of template position: a wrong template point shows as a colour error."""
    t = np.asarray(template, np.float64)
    return np.clip(127 + 120 * np.sin(6 * t + [0.0, 1.0, 2.0]), 0, 255).astype(np.uint8)


def colour_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.fixture(scope="module")
def painted(face_session):
    """The tiny model's mean face (48^3) painted by template coordinates."""
    s = face_session
    codes = s.mean_codes()
    mesh = s.extract(codes, 48)
    template = s.template_coordinates(codes, mesh.vertices)
    return codes, mesh, Albedo(template, pattern(template))


def changed_codes(session, what: str):
    rng = np.random.default_rng(1)
    codes = session.mean_codes()
    if what == "expression":
        codes.z_exp, codes.neutral = session.exp_space.sample(rng, 2.0), False
    else:
        codes.z_id = session.id_space.sample(rng, 2.0)
    return codes


@pytest.mark.parametrize("what", ["expression", "identity"])
def test_painted_colour_comes_back_at_the_same_template_points(face_session, painted, what):
    s = face_session
    base_codes, base, albedo = painted
    assert colour_error(s.albedo_colors(base_codes, base.vertices, albedo), albedo.colors) < 0.5
    codes = changed_codes(s, what)
    face = s.extract(codes, 48)  # a new extraction: other vertices, other topology
    template = s.template_coordinates(codes, face.vertices)
    covered = albedo.tree.query(template)[0] < 0.02  # template points the painted face covers
    assert covered.mean() > 0.5
    shown = s.albedo_colors(codes, face.vertices, albedo)[covered]
    right = colour_error(shown, pattern(template[covered]))
    # the control: template points of the wrong codes put the colour elsewhere
    wrong = colour_error(
        albedo.lookup(s.template_coordinates(base_codes, face.vertices))[covered], pattern(template[covered])
    )
    assert right < 3.0 and wrong > 2 * right


def test_colours_of_the_base_mesh_hold_through_the_live_morph(face_session, painted):
    """The editor colours a base mesh once and re-uses the colours while the morph runs."""
    s = face_session
    base_codes, base, albedo = painted
    codes = changed_codes(s, "expression")
    frame = s.morpher(base, base_codes).morph(codes, preview=False)
    assert frame.sound
    moved_mm = np.linalg.norm(frame.vertices - base.vertices, axis=1).mean() * 100
    assert moved_mm > 1.0
    assert colour_error(s.albedo_colors(codes, frame.vertices, albedo), albedo.colors) < 0.5
    assert colour_error(s.albedo_colors(codes, base.vertices, albedo), albedo.colors) > 2.0  # not moved


def test_neutral_albedo_and_round_trip(tmp_path, painted):
    _, _, albedo = painted
    neutral = Albedo.neutral_albedo()
    assert neutral.is_neutral and np.all(neutral.lookup(np.zeros((3, 3))) == neutral.neutral)
    far = albedo.lookup(np.full((1, 3), 3.0))  # nowhere near a sample: neutral
    assert np.array_equal(far[0], albedo.neutral)
    path = albedo.save(tmp_path / "a.albedo.safetensors", {"note": "test"})
    back = Albedo.load(path)
    assert np.array_equal(back.points, albedo.points) and np.array_equal(back.colors, albedo.colors)
    assert back.radius == pytest.approx(albedo.radius)


def test_bad_albedo_files_give_one_clear_line(tmp_path, painted):
    _, _, albedo = painted
    from safetensors.numpy import save

    def write(name, tensors, metadata=None):
        path = tmp_path / name
        path.write_bytes(save(tensors, metadata=metadata or {"format": "imface-albedo/1"}))
        return path

    ok = {"points": albedo.points, "colors": albedo.colors}
    cases = {
        tmp_path / "missing.safetensors": "cannot read",
        (tmp_path / "junk.safetensors"): "not an albedo file",
        write("other.safetensors", ok, {"format": "imface/1"}): "not an albedo file",
        write(
            "shape.safetensors", {"points": albedo.points[:, :2].copy(), "colors": albedo.colors}
        ): "(N, 3) float32",
        write(
            "nan.safetensors", {"points": np.full((4, 3), np.nan, np.float32), "colors": albedo.colors[:4]}
        ): "finite",
        write("count.safetensors", {"points": albedo.points, "colors": albedo.colors[:5]}): "like the points",
        write("radius.safetensors", ok, {"format": "imface-albedo/1", "albedo": '{"radius": -1}'}): "radius",
    }
    (tmp_path / "junk.safetensors").write_bytes(b"\x05" * 40)
    for path, words in cases.items():
        with pytest.raises(UserError) as err:
            Albedo.load(path)
        message = str(err.value)
        assert words in message and "\n" not in message and path.name in message


# -- coloured scans --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coloured_scan(tmp_path_factory, face_session):
    """The tiny model's mean face as a scan in mm, painted by its template coordinates: a PLY
    with vertex colours, the mesh (model frame) and the colour of each vertex."""
    s = face_session
    codes = s.mean_codes()
    mesh = s.extract(codes, 64)
    rgb = pattern(s.template_coordinates(codes, mesh.vertices))
    folder = tmp_path_factory.mktemp("coloured")
    path = folder / "painted.ply"
    scan = trimesh.Trimesh(mesh.vertices * 100.0, mesh.faces, process=False)
    scan.visual.vertex_colors = np.column_stack([rgb, np.full(len(rgb), 255, np.uint8)])
    scan.export(path)
    return path, mesh, rgb


def landmarks_mm() -> np.ndarray:
    """The 5 landmarks of the model's face (the tiny model's face is too plain for the automatic
    alignment; the app tests do the same)."""
    from imface.scan.template import template

    return template().landmarks5 * 100.0


def test_coloured_ply_keeps_its_colours_on_load(coloured_scan, tmp_path):
    path, mesh, rgb = coloured_scan
    scan = load_scan(path)
    assert scan.colours is not None and scan.colours.source == "vertex colours"
    assert np.array_equal(scan.colours.rgb, rgb) and np.allclose(scan.colours.points, mesh.vertices * 100.0)
    trimesh.Trimesh(mesh.vertices * 100.0, mesh.faces, process=False).export(tmp_path / "plain.ply")
    assert load_scan(tmp_path / "plain.ply").colours is None  # trimesh's default grey is no colour


@pytest.mark.parametrize("suffix", [".obj", ".glb"])
def test_textured_scan_gives_texel_colours(coloured_scan, tmp_path, suffix):
    from PIL import Image

    _, mesh, _ = coloured_scan
    vertices = mesh.vertices * 100.0
    uv = (vertices[:, :2] - vertices[:, :2].min(0)) / np.ptp(vertices[:, :2], axis=0)
    u, v = np.meshgrid(np.linspace(0, 1, 128), np.linspace(1, 0, 128))  # image rows go down
    image = np.stack([255 * u, 255 * v, np.full_like(u, 60)], -1).astype(np.uint8)
    if suffix == ".obj":
        material = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(image))
    else:
        material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(image))
    textured = trimesh.Trimesh(
        vertices, mesh.faces, visual=trimesh.visual.TextureVisuals(uv=uv, material=material), process=False
    )
    path = tmp_path / f"textured{suffix}"
    textured.export(path)
    scan = load_scan(path)
    colours = scan.colours
    assert colours is not None and colours.source == "texture" and len(colours.points) > len(vertices)
    points_uv = (colours.points[:, :2] - vertices[:, :2].min(0)) / np.ptp(vertices[:, :2], axis=0)
    expected = np.column_stack([255 * points_uv[:, 0], 255 * points_uv[:, 1], np.full(len(points_uv), 60)])
    assert colour_error(colours.rgb, expected) < 3.0


def test_fit_carries_the_scan_colour_onto_the_fitted_face(face_session, coloured_scan):
    from scipy.spatial import cKDTree

    s = face_session
    path, mesh, _ = coloured_scan
    loaded = drive(s.load_scan_job(path))
    outcome = drive(s.fit_job(loaded, landmarks_mm(), config=QUICK_FIT))
    assert outcome.albedo is not None and "painted.ply" in outcome.albedo.source
    fitted = outcome.alignment.to_model(outcome.mesh.vertices)  # the fitted face, model frame
    shown = s.albedo_colors(outcome.codes, fitted, outcome.albedo)
    on_scan = cKDTree(mesh.vertices).query(fitted)[0] < 0.03  # within 3 mm of a scan vertex
    assert on_scan.mean() > 0.5
    # the scan's own colour at those points: its pattern at their template points under its codes
    truth = pattern(s.template_coordinates(s.mean_codes(), fitted[on_scan]))
    assert colour_error(shown[on_scan], truth) < 6.0
    # with an expression change the colours stay on the face's features
    codes = outcome.codes.copy()
    codes.z_exp, codes.neutral = s.exp_space.sample(np.random.default_rng(3), 1.0), False
    face = s.extract(codes, 48)
    got = s.albedo_colors(codes, face.vertices, outcome.albedo)
    assert np.abs(got.astype(int) - np.array(outcome.albedo.neutral)).max(1).mean() > 10  # coloured


# -- CLI: fit writes the colour, rig and generate carry it -------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(face_session, tmp_path_factory):
    model, codes = face_session.model, face_session.checkpoint.codes
    trained = TrainedCodes(codes.z_id, codes.z_exp, codes.identity_labels, codes.expression_labels)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors", model, trained, {"step": 1})


def glb_json(path) -> dict:
    data = path.read_bytes()
    (length,) = struct.unpack("<I", data[12:16])
    return json.loads(data[20 : 20 + length])


@pytest.fixture(scope="module")
def synthetic_scans(synth_corpus, tmp_path_factory):  # noqa: F811
    """A synthetic head scan (mm) that the automatic alignment takes, coloured by position."""
    face = trimesh.load(synth_corpus / "001/1_neutral.ply", process=False)
    folder = tmp_path_factory.mktemp("synthetic")
    painted = trimesh.Trimesh(face.vertices, face.faces, process=False)
    rgb = pattern(face.vertices / 100.0)
    painted.visual.vertex_colors = np.column_stack([rgb, np.full(len(rgb), 255, np.uint8)])
    painted.export(folder / "painted.ply")
    return folder / "painted.ply"


def test_fit_cli_writes_colour_and_rig_carries_it(checkpoint, synthetic_scans, tmp_path, capsys):
    out, codes = tmp_path / "fitted.ply", tmp_path / "face.codes.json"
    common = ["--checkpoint", str(checkpoint), "--resolution", "40"]
    args = ["fit", str(synthetic_scans), "--out", str(out), "--codes", str(codes), *common]
    assert main([*args, "--iterations", "3", "--keep-poor"]) == 0  # a toy network fits poorly
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "colour samples" in summary["colour"]
    fitted = trimesh.load(out, process=False)
    assert fitted.visual.kind == "vertex" and np.ptp(fitted.visual.vertex_colors[:, :3]) > 50
    albedo_file = albedo_path_for_codes(codes)
    assert albedo_file.name == "face.codes.albedo.safetensors" and albedo_file.exists()
    assert json.loads(codes.read_text())["albedo"] == albedo_file.name
    rig = tmp_path / "rig"
    assert main(["rig", "--codes", str(codes), "--out", str(rig), "--format", "glb", *common]) == 0
    assert json.loads(capsys.readouterr().out)["colors"] != "none"
    primitive = glb_json(rig / "rig.glb")["meshes"][0]["primitives"][0]
    assert "COLOR_0" in primitive["attributes"] and primitive["targets"]
    smile = trimesh.load(rig / "2_smile.glb", force="mesh", process=False)
    neutral = trimesh.load(rig / "1_neutral.glb", force="mesh", process=False)
    assert np.array_equal(smile.visual.vertex_colors, neutral.visual.vertex_colors)
    rig_colours = trimesh.load(rig / "rig.glb", force="mesh", process=False).visual.vertex_colors
    # both linear, as glTF wants (float COLOR_0 in rig.glb, bytes in the meshes)
    assert np.abs(rig_colours[:, :3].astype(int) - neutral.visual.vertex_colors[:, :3]).max() <= 1
    assert np.ptp(neutral.vertices, axis=0).max() < 0.5  # metres
    assert json.loads((rig / "1_neutral.glb.json").read_text())["colors"] is True
    # the person's detail went beside the codes too, and rides on every mesh of the rig
    data = json.loads(codes.read_text())
    assert data["detail"] == "face.codes.detail.safetensors" and (tmp_path / data["detail"]).exists()
    plain_codes = tmp_path / "plain.json"
    plain_codes.write_text(json.dumps({k: v for k, v in data.items() if k not in ("detail", "albedo")}))
    plain = tmp_path / "plain"
    assert main(["rig", "--codes", str(plain_codes), "--out", str(plain), "--format", "ply", *common]) == 0
    assert json.loads(capsys.readouterr().out)["detail"] == "none"
    detailed = tmp_path / "detailed"
    assert main(["rig", "--codes", str(codes), "--out", str(detailed), "--format", "ply", *common]) == 0
    assert json.loads(capsys.readouterr().out)["detail"].startswith("fitted detail")
    moved = {}
    for name in ("1_neutral", "2_smile"):
        a, b = (trimesh.load(f / f"{name}.ply", process=False) for f in (plain, detailed))
        assert np.array_equal(a.faces, b.faces)
        moved[name] = np.linalg.norm(b.vertices - a.vertices, axis=1)
    assert moved["1_neutral"].max() > 0.1  # mm
    assert np.allclose(moved["1_neutral"], moved["2_smile"], atol=1e-3)  # the same offset per vertex
    faces = tmp_path / "gen"
    generate = ["generate", "--n", "1", "--out", str(faces), "--albedo", str(albedo_file), *common]
    assert main(generate) == 0
    ply = trimesh.load(faces / "face_000.ply", process=False)
    assert ply.visual.kind == "vertex" and len(ply.visual.vertex_colors) == len(ply.vertices)


def test_colour_far_from_the_fitted_face_is_dropped(painted, face_session):
    from imface.appearance.albedo import NoColourOnFace, transfer_colours

    codes, mesh, _ = painted
    template = lambda p: face_session.template_coordinates(codes, p)  # noqa: E731
    far = mesh.vertices + [3.0, 0.0, 0.0]  # 300 mm beside the face
    near = mesh.vertices[:50]
    rgb = np.full((len(far) + len(near), 3), 200, np.uint8)
    albedo = transfer_colours(np.vstack([far, near]), rgb, mesh.vertices, mesh.faces, template)
    assert len(albedo.points) == len(near)
    with pytest.raises(NoColourOnFace, match="no colour of the scan lies on the fitted face"):
        transfer_colours(far, rgb[: len(far)], mesh.vertices, mesh.faces, template)
