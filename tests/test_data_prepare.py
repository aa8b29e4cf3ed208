"""prepare CLI, cache layout, Corpus, SDFDataset, FaceScape layout."""

import json
import shutil

import numpy as np
import pytest
import torch
import trimesh
from torch.utils.data import DataLoader, DistributedSampler

from imface.cli import main
from imface.corpus import anny_head
from imface.corpus.facescape import find_scans
from imface.samples.cache import Corpus
from imface.samples.dataset import SDFDataset
from tests.data_fixtures import synth_corpus  # noqa: F401

SMALL = ["--surface", "2000", "--space", "500", "--workers", "1"]


@pytest.fixture(scope="module")
def cache(synth_corpus, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("cache")
    assert main(["prepare", str(synth_corpus), "--out", str(out), *SMALL]) == 0
    return out


def test_cache_layout_and_corpus(cache):
    c = Corpus.open(cache)
    assert len(c.scans) == 8 and c.identities == ["001", "002"]
    assert c.expressions[:3] == ["1_neutral", "2_smile", "3_mouth_stretch"]
    rec = c.record("001/1_neutral")
    assert rec["neutral"] and rec["dir"] == "001/1_neutral" and rec["identity"] == "001"
    assert not c.record("002/2_smile")["neutral"]
    a = c.load("002/2_smile")
    assert isinstance(a["surface_points"], np.memmap) and a["surface_points"].shape == (2000, 3)
    assert a["space_sdf"].shape == (500,) and a["landmarks68"].shape == (68, 3)
    assert a["registered_vertices"].shape == (4200, 3) and c.registered_faces.shape == (8356, 3)
    assert np.allclose(a["landmarks5"], a["landmarks68"][[36, 45, 30, 48, 54]])
    assert a["transform"]["method"] == "exact" and len(a["transform"]["transform"]) == 4
    assert np.linalg.norm(a["landmarks5"][2] - [0, 0, 0.4]) < 0.03
    train, test = c.split(1, seed=0)
    assert len(train) == len(test) == 4 and c.split(1, seed=0) == (train, test)
    ids = lambda keys: {c.record(k)["identity"] for k in keys}  # noqa: E731
    assert ids(train).isdisjoint(ids(test))
    assert c.split(0.5, seed=1)[1] != [] and c.mean_landmarks5().shape == (5, 3)


def test_rerun_skips_and_recovers_from_interruption(cache, synth_corpus, capsys):  # noqa: F811
    victim = cache / "001" / "2_smile"
    stamp = (cache / "002" / "2_smile" / "surface_points.npy").stat().st_mtime_ns
    shutil.rmtree(victim)  # as if the run died while writing it
    (cache / "001" / ".tmp-2_smile-1234").mkdir()  # a half-written folder
    assert main(["prepare", str(synth_corpus), "--out", str(cache), *SMALL]) == 0
    assert (victim / "transform.json").exists()
    assert not list(cache.glob("**/.tmp-*"))
    assert (cache / "002" / "2_smile" / "surface_points.npy").stat().st_mtime_ns == stamp
    assert len(json.loads((cache / "index.json").read_text())["scans"]) == 8


def test_dataset_items_and_distributed_sampler(cache):
    c = Corpus.open(cache)
    train, _ = c.split(1, seed=0)
    ds = SDFDataset(c, train, points_per_scan=256, surface_fraction=0.25, seed=0)
    item = ds[1]
    assert item["surface_points"].shape == (64, 3) and item["space_points"].shape == (192, 3)
    assert item["space_sdf"].shape == (192,) and item["landmarks5"].shape == (5, 3)
    assert item["scan"].item() == 1 and item["identity"].item() == 0
    assert ds.identity_names == sorted({c.record(k)["identity"] for k in train})
    assert item["neutral"].dtype == torch.bool and ds.scan_keys == train
    assert not torch.equal(ds[1]["surface_points"], item["surface_points"])  # fresh draw
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=0)
    batch = next(iter(DataLoader(ds, batch_size=2, sampler=sampler)))
    assert batch["space_grad"].shape == (2, 192, 3) and batch["scan"].shape == (2,)


def test_facescape_layouts_with_landmark_indices(tmp_path, synth_corpus, capsys):  # noqa: F811
    """FaceScape TU: models_reg and flattened layouts, landmarks from landmark_indices.npz."""
    faces = np.load(synth_corpus / "anny_faces.npy")
    for ident, sub in (("7", "models_reg"), ("9", "")):
        for expr in ("1_neutral", "2_smile"):
            reg = np.load(synth_corpus / f"001/{expr}.reg.npy")
            folder = tmp_path / "tu" / ident / sub
            folder.mkdir(parents=True, exist_ok=True)
            trimesh.Trimesh(reg, faces, process=False).export(folder / f"{expr}.obj")
    (tmp_path / "tu" / "7" / "models_reg" / "notes.obj").write_text("# not a scan\n")
    npz = tmp_path / "landmark_indices.npz"
    np.savez(npz, v10=anny_head.load_landmarks().indices)
    kind, found = find_scans(tmp_path / "tu", npz)
    assert kind == "facescape" and [s.key for s in found] == [
        "7/1_neutral",
        "7/2_smile",
        "9/1_neutral",
        "9/2_smile",
    ]
    out = tmp_path / "cache"
    assert (
        main(
            [
                "prepare",
                str(tmp_path / "tu"),
                "--out",
                str(out),
                "--landmarks",
                str(npz),
                "--limit",
                "2",
                *SMALL,
            ]
        )
        == 0
    )
    a = Corpus.open(out).load("7/1_neutral")
    assert a["transform"]["method"] == "landmarks68"
    assert np.allclose(a["landmarks68"][30], [0, 0, 0.4], atol=1e-6)
    assert np.linalg.norm(a["landmarks5"] - Corpus.open(out).mean_landmarks5(), axis=1).max() < 0.1


def test_plain_folder_uses_automatic_alignment(tmp_path, synth_corpus):  # noqa: F811
    src = tmp_path / "drop"
    src.mkdir()
    mesh = trimesh.load(synth_corpus / "002/1_neutral.ply", process=False)
    mesh.vertices = mesh.vertices / 1000.0  # metres this time
    mesh.export(src / "visitor.stl")
    out = tmp_path / "cache"
    assert main(["prepare", str(src), "--out", str(out), *SMALL]) == 0
    a = Corpus.open(out).load("visitor/visitor")
    assert a["transform"]["method"] == "automatic" and a["transform"]["unit"] == "m"
    assert Corpus.open(out).record("visitor/visitor")["landmarks"] == "estimated"
