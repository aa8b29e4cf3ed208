"""Loading scans: formats, units, bad input (one clear MeshError naming the file)."""

import subprocess
import sys

import numpy as np
import pytest
import trimesh

from imface.errors import MeshError
from imface.scan.load import decimate, guess_unit, load_scan
from tests.data_fixtures import load_synth, synth_corpus  # noqa: F401


@pytest.fixture(scope="module")
def face(synth_corpus):  # noqa: F811
    v, f, _ = load_synth(synth_corpus, "001/1_neutral")
    return v, f


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".stl", ".off", ".glb"])
def test_mesh_formats(tmp_path, face, suffix):
    v, f = face
    path = tmp_path / f"face{suffix}"
    trimesh.Trimesh(v, f, process=False).export(path)
    scan = load_scan(path)
    assert scan.faces is not None and scan.unit == "mm" and scan.path == str(path)
    assert np.allclose(np.ptp(scan.vertices, 0), np.ptp(v, 0), rtol=1e-4)


@pytest.mark.parametrize("suffix", [".ply", ".xyz", ".npy"])
def test_point_clouds(tmp_path, face, suffix):
    v = face[0][::7]
    path = tmp_path / f"cloud{suffix}"
    if suffix == ".npy":
        np.save(path, v)
    elif suffix == ".xyz":
        np.savetxt(path, v)
    else:
        trimesh.PointCloud(v).export(path)
    scan = load_scan(path)
    assert scan.is_point_cloud and len(scan.vertices) == len(v)


def test_units_guessed_and_overridden(tmp_path, face):
    v = face[0]
    assert guess_unit(v) == "mm" and guess_unit(v / 10) == "cm" and guess_unit(v / 1000) == "m"
    np.save(tmp_path / "m.npy", v / 1000)
    assert load_scan(tmp_path / "m.npy").metres == 1.0
    assert load_scan(tmp_path / "m.npy", unit="mm").unit == "mm"
    with pytest.raises(MeshError, match="unknown unit"):
        load_scan(tmp_path / "m.npy", unit="furlong")


def _bad(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize(
    "name,data,message",
    [
        ("empty.ply", b"", "empty"),
        ("garbage.ply", bytes(range(256)) * 40, "cannot read"),
        ("garbage.obj", bytes(range(256)) * 40, "no "),
        ("garbage.stl", b"\x00\xff" * 3000, "garbage.stl"),
        ("notes.docx", b"hello", "unsupported"),
        ("tiny.xyz", b"0 0 0\n1 0 0\n0 1 0\n", "only 3 points"),
    ],
    ids=["empty", "garbage-ply", "garbage-obj", "garbage-stl", "unsupported", "three-points"],
)
def test_bad_files(tmp_path, name, data, message):
    with pytest.raises(MeshError, match=message) as info:
        load_scan(_bad(tmp_path, name, data))
    assert name in str(info.value) and "\n" not in str(info.value)


def test_nan_and_degenerate_meshes(tmp_path, face):
    v, f = face
    nan = v.copy()
    nan[5] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(MeshError, match="NaN or infinite"):
        load_scan(tmp_path / "nan.npy")
    flat = v.copy()
    flat[:, 1:] = 0  # every triangle collapses onto a line
    trimesh.Trimesh(flat, f, process=False).export(tmp_path / "line.ply")
    with pytest.raises(MeshError, match="zero area|degenerate"):
        load_scan(tmp_path / "line.ply")
    with pytest.raises(MeshError, match="no such file"):
        load_scan(tmp_path / "missing.obj")


def test_cli_prints_one_line(tmp_path):
    bad = _bad(tmp_path, "broken.ply", b"ply\nformat nonsense\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "imface",
            "prepare",
            str(tmp_path),
            "--out",
            str(tmp_path / "cache"),
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "broken.ply" in proc.stderr
    assert bad.exists()


def test_decimation_keeps_shape(face):
    v, f = face
    dv, df = decimate(v, f, 8000)
    assert len(dv) <= 8000 and len(df) > 0 and df.max() < len(dv)
    assert np.allclose(np.ptp(dv, 0), np.ptp(v, 0), rtol=0.05)
