"""The bad-input suite: hostile and broken files for the CLI and for the loaders the editor uses.

Every case must end in one clear line naming the file (UserError, or exit status 1 with one
`error:` line) and must lose nothing. Every hostile-path case snapshots the files around the
output folder and proves nothing outside it was written, read back, replaced or deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from imface.cli import main
from imface.config import ModelConfig, TrainConfig
from imface.errors import CheckpointError, MeshError, UserError
from imface.io import TrainedCodes, load_checkpoint, save_checkpoint
from imface.model import ImFace
from imface.paths import (
    atomic_write_text,
    check_output_file,
    confined,
    missing_reason,
    safe_name,
)

PREPARE_SMALL = ["--surface", "1500", "--space", "400", "--workers", "1"]


# -- helpers ----------------------------------------------------------------------------------
def snapshot(root: Path, inside: Path) -> dict[str, str]:
    """Every file and link under `root` except those under `inside`: path -> content digest."""
    found = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d != inside]
        for name in files + [d for d in dirs if (here / d).is_symlink()]:
            path = here / name
            if path.is_symlink():
                found[str(path)] = "link:" + os.readlink(path)
            else:
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def one_line_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def tiny_checkpoint(path: Path, model: ImFace | None = None, labels=None) -> Path:
    cfg = model.config if model is not None else ModelConfig.tiny()
    model = model if model is not None else ImFace(cfg)
    labels = list(labels or ["2_smile", "3_mouth_stretch", "2_smile"])
    gen = torch.Generator().manual_seed(0)
    codes = TrainedCodes(
        z_id=torch.randn(2, cfg.id_dim, generator=gen) * 0.3,
        z_exp=torch.randn(len(labels), cfg.exp_dim, generator=gen) * 0.3,
        identity_labels=["001", "002"],
        expression_labels=labels,
    )
    return save_checkpoint(path, model, codes, {"step": 1})


def rewrite_checkpoint(source: Path, target: Path, metadata=None, tensors=None) -> Path:
    """A copy of `source` with some metadata entries / tensors replaced (None drops a tensor)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as f:
        meta = dict(f.metadata())
        stored = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(metadata or {})
    for name, value in (tensors or {}).items():
        if value is None:
            stored.pop(name)
        else:
            stored[name] = value
    save_file(stored, str(target), metadata=meta)
    return target


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "good.safetensors")


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


# -- paths ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("2_smile", "2_smile"),
        ("../../RIG_ESCAPE", "_.._RIG_ESCAPE"),
        ("/etc/passwd", "_etc_passwd"),
        ("..", "unnamed"),
        (".hidden", "hidden"),
        ("a\nb\x00c", "a_b_c"),
        ("", "unnamed"),
        ("C:\\x\\y", "C_x_y"),
    ],
)
def test_safe_name_is_one_harmless_component(text, expected):
    assert safe_name(text) == expected
    assert "/" not in safe_name(text) and not safe_name(text).startswith(".")


def test_confined_refuses_every_way_out(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    (root / "loop").symlink_to(root / "loop")
    assert confined(root, "a/b.ply") == (root / "a" / "b.ply").resolve()
    for hostile in ("../x", "a/../../x", str(tmp_path / "x"), "link/x", ".", "a/.."):
        with pytest.raises(UserError):
            confined(root, hostile)
    with pytest.raises(UserError, match="loop"):
        confined(root, "loop/x")


def test_missing_reason_tells_a_symlink_loop_from_a_missing_file(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    assert "symlink loop" in missing_reason(tmp_path / "a")
    assert missing_reason(tmp_path / "nothing") == "no such file"
    assert missing_reason(tmp_path / "dangling") == "a broken symlink"


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        atomic_write_text(target, "newer")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_output_checks_refuse_before_any_work(tmp_path):
    with pytest.raises(UserError, match="unsupported output format"):
        check_output_file(tmp_path / "out.txt", (".ply", ".obj"))
    with pytest.raises(UserError, match="cannot write"):
        check_output_file("/proc/imface-out.ply", (".ply",))
    with pytest.raises(UserError, match="is a folder"):
        check_output_file(tmp_path)
    assert check_output_file(tmp_path / "new" / "x.ply", (".ply",)).parent.is_dir()
    assert list((tmp_path / "new").iterdir()) == []  # the probe file is gone


# -- configs ----------------------------------------------------------------------------------
def test_config_given_as_a_json_string_says_so():
    text = ModelConfig.tiny().to_json()
    with pytest.raises(ValueError, match="JSON string, not a JSON object"):
        ModelConfig.from_dict(text)
    with pytest.raises(ValueError, match="must be a JSON object, not list"):
        ModelConfig.from_dict([1, 2])


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("siren_width", "32", "must be a int"),
        ("siren_width", 10**9, "outside"),
        ("hyper_hidden", [64, "x"], "list of integers"),
        ("detail", "yes", "must be a bool"),
        ("siren_omega0", float("nan"), "must be a float"),
        ("n_landmarks", 10_000, "outside"),
    ],
)
def test_config_values_of_the_wrong_type_or_size(key, value, message):
    data = ModelConfig.tiny().to_dict()
    data[key] = value
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(data)


def test_training_config_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown training config keys: epoch"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="unknown loss weight keys: sdff"):
        TrainConfig.from_dict({"losses": {"sdff": 1.0}})
    config = tmp_path / "train.json"
    config.write_text(json.dumps(json.dumps(TrainConfig().to_dict())))  # encoded twice
    cache = tmp_path / "cache"
    cache.mkdir()
    assert (
        main(["train", "--corpus", str(cache), "--out", str(tmp_path / "run"), "--config", str(config)]) == 1
    )
    one_line_error(capsys, "train.json", "JSON string")


# -- checkpoints (the CLI's and the editor's loader) -----------------------------------------------
def test_identity_labels_of_the_wrong_type(good_checkpoint, tmp_path, capsys):
    labels = json.loads(_metadata(good_checkpoint)["codes"])
    labels["identity_labels"] = 7
    bad = rewrite_checkpoint(
        good_checkpoint, tmp_path / "int_labels.safetensors", {"codes": json.dumps(labels)}
    )
    with pytest.raises(CheckpointError, match="int_labels.safetensors: codes label 'identity_labels'"):
        load_checkpoint(bad)
    assert main(["info", str(bad)]) == 1
    one_line_error(capsys, "int_labels.safetensors")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"expression_labels": [1, 2, 3]}, "list of strs"),
        ({"expression_identity": [0, 0, 9]}, "identities that do not exist"),
        ({"expression_keys": ["a"]}, "1 expression keys for 3 codes"),
        ("not an object", "must be a JSON object"),
    ],
)
def test_labels_that_do_not_fit_the_codes(good_checkpoint, tmp_path, change, message):
    labels = json.loads(_metadata(good_checkpoint)["codes"])
    labels = {**labels, **change} if isinstance(change, dict) else change
    bad = rewrite_checkpoint(good_checkpoint, tmp_path / "labels.safetensors", {"codes": json.dumps(labels)})
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(bad)


def test_enormous_config_is_refused_from_the_header_without_allocating(good_checkpoint, tmp_path):
    config = ModelConfig.tiny().to_dict()
    config.update(siren_width=4096, hyper_hidden=[4096, 4096], landmark_hidden=[4096])  # ~10^12 weights
    bad = rewrite_checkpoint(good_checkpoint, tmp_path / "huge.safetensors", {"config": json.dumps(config)})
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match="huge.safetensors: config does not match the stored weights"):
        load_checkpoint(bad)
    assert time.perf_counter() - started < 20
    config["siren_width"] = 10**7
    worse = rewrite_checkpoint(
        good_checkpoint, tmp_path / "worse.safetensors", {"config": json.dumps(config)}
    )
    with pytest.raises(CheckpointError, match="worse.safetensors: invalid model config .*outside"):
        load_checkpoint(worse)


def test_config_stored_as_a_json_string(good_checkpoint, tmp_path):
    twice = json.dumps(_metadata(good_checkpoint)["config"])
    bad = rewrite_checkpoint(good_checkpoint, tmp_path / "twice.safetensors", {"config": twice})
    with pytest.raises(CheckpointError, match="twice.safetensors: invalid model config .*JSON string"):
        load_checkpoint(bad)


@pytest.mark.parametrize("name", ["model.template_landmarks", "codes.z_id", "codes.z_exp"])
def test_non_finite_weights_and_codes_are_refused_at_load(good_checkpoint, tmp_path, name):
    from safetensors import safe_open

    with safe_open(str(good_checkpoint), framework="pt") as f:
        tensor = f.get_tensor(name).clone()
    tensor.view(-1)[0] = float("nan") if name != "codes.z_exp" else float("inf")
    bad = rewrite_checkpoint(good_checkpoint, tmp_path / "nan.safetensors", tensors={name: tensor})
    with pytest.raises(
        CheckpointError, match=f"nan.safetensors: 1 tensors hold NaN or infinite values .*{name}"
    ):
        load_checkpoint(bad)


def test_wrong_dtype_missing_codes_and_bad_meta(good_checkpoint, tmp_path):
    from safetensors import safe_open

    with safe_open(str(good_checkpoint), framework="pt") as f:
        z_id = f.get_tensor("codes.z_id")
    ints = rewrite_checkpoint(
        good_checkpoint, tmp_path / "i.safetensors", tensors={"codes.z_id": z_id.long()}
    )
    with pytest.raises(CheckpointError, match="dtype I64"):
        load_checkpoint(ints)
    gone = rewrite_checkpoint(good_checkpoint, tmp_path / "g.safetensors", tensors={"codes.z_id": None})
    with pytest.raises(CheckpointError, match="g.safetensors: codes missing"):
        load_checkpoint(gone)
    empty = rewrite_checkpoint(good_checkpoint, tmp_path / "e.safetensors", tensors={"codes.z_id": z_id[:0]})
    with pytest.raises(CheckpointError, match="no identity codes"):
        load_checkpoint(empty)
    meta = rewrite_checkpoint(good_checkpoint, tmp_path / "m.safetensors", {"meta": "[1, 2]"})
    with pytest.raises(CheckpointError, match="metadata must be a JSON object"):
        load_checkpoint(meta)


def test_header_that_is_not_json(tmp_path):
    bad = tmp_path / "header.safetensors"
    body = b"{not json" + b" " * 7
    bad.write_bytes(len(body).to_bytes(8, "little") + body + b"\0" * 32)
    with pytest.raises(CheckpointError, match="header.safetensors: corrupt checkpoint"):
        load_checkpoint(bad)


def test_checkpoint_symlink_loop_says_so(tmp_path, capsys):
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop)
    with pytest.raises(CheckpointError, match="symlink loop"):
        load_checkpoint(loop)
    assert main(["info", str(loop)]) == 1
    one_line_error(capsys, "loop.safetensors", "symlink loop")


# -- rig: file names from checkpoint labels -------------------------------------------------------
def test_rig_labels_cannot_write_outside_out(face_model, tmp_path):
    hostile = ["../../RIG_ESCAPE", str(tmp_path / "ABSOLUTE"), "2_smile", "2/smile", "1_neutral"]
    ckpt = tiny_checkpoint(tmp_path / "labels.safetensors", face_model, hostile)
    out = tmp_path / "a" / "b" / "out"
    out.mkdir(parents=True)
    (tmp_path / "sentinel.obj").write_text("keep")
    before = snapshot(tmp_path, out)
    code = main(
        ["rig", "--checkpoint", str(ckpt), "--identity", "0", "--out", str(out)] + ["--resolution", "32"]
    )
    assert code == 0
    assert snapshot(tmp_path, out) == before
    written = sorted(p.name for p in out.iterdir())
    # a rig holds the named FaceScape expressions only: labels that are none of them are left out
    assert sorted(n for n in written if n.endswith(".ply")) == ["1_neutral.ply", "2_smile.ply"]


def test_rig_file_names_are_unique():
    from imface.generate import rig_file_names

    names = rig_file_names(["a/b", "a_b", "rig", "", "2_smile"])
    assert list(names.values()) == ["a_b", "a_b-2", "rig-2", "expression", "2_smile"]


# -- prepare: keys, index entries and leftovers from data --------------------------------------------
def _sphere_scan(folder: Path, stem: str, identity: str, neutral: bool, radius: float = 0.6) -> None:
    """A scan of a synthetic corpus: a sphere already in the model frame, with its metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    trimesh.creation.icosphere(3, radius=radius).export(folder / f"{stem}.ply")
    directions = np.random.default_rng(0).normal(size=(68, 3)) * [1, 1, 0.2] + [0, 0, 1]
    landmarks = radius * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    meta = {
        "identity": identity,
        "neutral": neutral,
        "to_model": np.eye(4).tolist(),
        "landmarks68": landmarks.tolist(),
        "unit": "m",
    }
    (folder / f"{stem}.json").write_text(json.dumps(meta))


def _synthetic_source(root: Path, identities: dict[str, str]) -> Path:
    """{folder: identity written in its JSON} -> a synthetic corpus folder of spheres."""
    root.mkdir(parents=True)
    (root / "corpus.json").write_text("{}")
    for folder, identity in identities.items():
        _sphere_scan(root / folder, "1_neutral", identity, True)
    return root


def test_prepare_identity_cannot_lead_outside_out(tmp_path, capsys):
    src = _synthetic_source(tmp_path / "src", {"001": "../../rel/victim", "002": str(tmp_path / "abs")})
    out = tmp_path / "deep" / "out"
    for victim in (tmp_path / "rel" / "victim", tmp_path / "deep" / "rel" / "victim", tmp_path / "abs"):
        victim.mkdir(parents=True)
        (victim / "1_neutral").write_text("must survive")
    before = snapshot(tmp_path, out)
    assert main(["prepare", str(src), "--out", str(out), *PREPARE_SMALL]) == 0
    assert snapshot(tmp_path, out) == before
    from imface.samples.cache import Corpus

    corpus = Corpus.open(out)
    assert len(corpus.scans) == 2
    for key in corpus.keys:
        assert out.resolve() in corpus.scan_dir(key).parents


def test_prepare_lists_every_failure_and_exits_nonzero(tmp_path, capsys):
    src = _synthetic_source(tmp_path / "src", {"001": "001"})
    _sphere_scan(src / "002", "1_neutral", "002", True)
    (src / "002" / "1_neutral.ply").write_bytes(b"ply\nformat garbage\n")  # unreadable mesh
    _sphere_scan(src / "003", "1_neutral", "003", True)
    (src / "003" / "1_neutral.json").write_text('{"identity": "003", "neut')  # cut short
    _sphere_scan(src / "004", "1_neutral", "004", True)
    (src / "004" / "1_neutral.json").write_text('{"identity": "004", "neutral": true}')  # incomplete
    out = tmp_path / "out"
    assert main(["prepare", str(src), "--out", str(out), *PREPARE_SMALL]) == 1
    captured = capsys.readouterr()
    assert "1 scans ready" in captured.out and "3 failed" in captured.out
    assert "Traceback" not in captured.err
    # the failures, not the progress bar (which clears its line with spaces when it closes)
    listed = [line for line in captured.err.splitlines() if line.startswith("  ") and line.strip()]
    assert len(listed) == 3
    assert any("002/1_neutral" in line for line in listed)
    assert any("003/1_neutral.json: unreadable scan metadata" in line for line in listed)
    assert any(
        "004/1_neutral.json: incomplete scan metadata (no to_model, landmarks68)" in line for line in listed
    )
    assert (out / "001" / "1_neutral" / "transform.json").exists()


def test_prepare_refuses_two_scans_claiming_one_key_naming_both(tmp_path, capsys):
    src = _synthetic_source(tmp_path / "src", {"001": "007", "002": "007"})
    assert main(["prepare", str(src), "--out", str(tmp_path / "out"), *PREPARE_SMALL]) == 1
    one_line_error(capsys, "001/1_neutral.ply", "002/1_neutral.ply", "007/1_neutral")
    assert not (tmp_path / "out").exists()


def test_plain_folder_keys_are_unique_so_no_scan_is_lost(tmp_path):
    from imface.corpus.facescape import find_scans

    src = tmp_path / "src"
    for rel in ("p1/a/neutral.ply", "p1/b/neutral.ply", "x.ply", "x.obj", "p2/smile.ply"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("mesh")
    kind, sources = find_scans(src)
    keys = {s.key: s.path.relative_to(src).as_posix() for s in sources}
    assert kind == "scans"
    assert keys == {
        "p1/a_neutral": "p1/a/neutral.ply",
        "p1/b_neutral": "p1/b/neutral.ply",
        "x/x_ply": "x.ply",
        "x/x_obj": "x.obj",
        "p2/smile": "p2/smile.ply",
    }
    assert all(s.neutral for s in sources if "neutral" in s.key)


def test_plain_folder_names_that_collapse_together_are_refused(tmp_path):
    from imface.corpus.facescape import find_scans

    for rel in ("a b/neutral.ply", "a_b/smile.ply"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("mesh")
    with pytest.raises(UserError, match="'a b' and 'a_b' would both be identity 'a_b'"):
        find_scans(tmp_path)


def test_hostile_index_dir_is_never_read_or_deleted(tmp_path, capsys):
    from imface.samples.cache import Corpus, write_index

    cache = tmp_path / "cache"
    cache.mkdir()
    secret = tmp_path / "secret"
    secret.mkdir()
    np.save(secret / "surface_points.npy", np.zeros((3, 3)))
    (secret / "transform.json").write_text("{}")
    for hostile in ("../secret", str(secret)):
        record = {"key": "x/1", "identity": "x", "expression": "1", "neutral": True, "dir": hostile}
        write_index(cache, [record])
        with pytest.raises(UserError, match="leads outside|absolute path"):
            Corpus.open(cache)
    # prepare over that index: the entry is ignored, the folder it names stays untouched
    src = _synthetic_source(tmp_path / "src", {"001": "001"})
    before = snapshot(tmp_path, cache)
    assert main(["prepare", str(src), "--out", str(cache), *PREPARE_SMALL]) == 0
    assert snapshot(tmp_path, cache) == before
    assert Corpus.open(cache).keys == ["001/1_neutral"]


def test_index_that_is_corrupt_or_incomplete(tmp_path):
    from imface.samples.cache import Corpus

    (tmp_path / "index.json").write_text('{"scans": [')
    with pytest.raises(UserError, match="index.json: unreadable"):
        Corpus.open(tmp_path)
    (tmp_path / "index.json").write_text('{"scans": [{"key": "a/b", "identity": "a"}]}')
    with pytest.raises(UserError, match="index.json: scan 'a/b': 'expression' missing"):
        Corpus.open(tmp_path)
    (tmp_path / "index.json").write_text("[]")
    with pytest.raises(UserError, match="not a cache index"):
        Corpus.open(tmp_path)


def test_leftover_cleanup_never_follows_links_out(tmp_path):
    src = _synthetic_source(tmp_path / "src", {"001": "001"})
    out = tmp_path / "out"
    (out / "001").mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / ".tmp-keep").mkdir(parents=True)
    (outside / ".tmp-keep" / "data").write_text("must survive")
    (out / ".tmp-link").symlink_to(outside)  # a link named like a leftover
    (out / "001" / "linked").symlink_to(outside)  # a link to a folder holding a "leftover"
    (out / "001" / ".tmp-1_neutral-99").mkdir()  # a real leftover: removed
    before = snapshot(tmp_path, out)
    assert main(["prepare", str(src), "--out", str(out), *PREPARE_SMALL]) == 0
    assert snapshot(tmp_path, out) == before
    assert not (out / ".tmp-link").is_symlink() and (out / "001" / "linked").is_symlink()
    assert not (out / "001" / ".tmp-1_neutral-99").exists()


# -- train: run folder, split and log --------------------------------------------------------------
@pytest.fixture(scope="module")
def sphere_cache(tmp_path_factory):
    from tests.test_train import write_sphere_cache

    return write_sphere_cache(tmp_path_factory.mktemp("cache"), identities=3, expressions=2)


def _train(cache, out, *extra) -> int:
    args = ["train", "--corpus", str(cache), "--out", str(out), "--preset", "tiny", "--device", "cpu"]
    return main(args + ["--points-per-scan", "64", "--scans-per-batch", "2", "--max-steps", "2", *extra])


def test_corrupt_run_config_is_one_line(sphere_cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(sphere_cache, run, "--test-identities", "1") == 0
    capsys.readouterr()
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text('{"epochs": 3, "mod')
    assert _train(sphere_cache, run, "--resume") == 1
    one_line_error(capsys, "config.json", "cannot read the run's training config")
    (run / "config.json").write_text(json.dumps({**config, "model": "tiny"}))
    assert _train(sphere_cache, run, "--resume") == 1
    one_line_error(capsys, "config.json", "invalid training config")
    (run / "split.json").write_text('{"train_keys": 3}')
    (run / "config.json").write_text(json.dumps(config))
    assert _train(sphere_cache, run, "--resume") == 1
    one_line_error(capsys, "split.json", "corrupt split")


def test_resume_keeps_the_stored_split_whatever_test_identities_says(sphere_cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(sphere_cache, run, "--test-identities", "1") == 0
    split = json.loads((run / "split.json").read_text())
    assert len(split["test_identities"]) == 1 and len(split["train_keys"]) == 4
    for extra in ([], ["--test-identities", "0"]):  # the default and an explicit other value
        capsys.readouterr()
        steps = 2 + 2 * (extra != [])
        assert _train(sphere_cache, run, "--resume", "--max-steps", str(2 + steps), *extra) == 0
        err = capsys.readouterr().err
        assert ("ignored; this run keeps its stored split" in err) == bool(extra)
    assert json.loads((run / "split.json").read_text()) == split
    ckpt = load_checkpoint(run / "model.safetensors")
    assert ckpt.codes.z_id.shape[0] == 2 and ckpt.meta["test_identities"] == 1


def test_resume_refuses_a_cache_that_lost_the_runs_scans(sphere_cache, tmp_path, capsys):
    from imface.samples.cache import Corpus, write_index

    run = tmp_path / "run"
    assert _train(sphere_cache, run, "--test-identities", "0") == 0
    smaller = tmp_path / "smaller"
    records = Corpus.open(sphere_cache).scans[:2]  # a cache holding two of the scans only
    for r in records:
        shutil.copytree(sphere_cache / r["dir"], smaller / r["dir"])
    write_index(smaller, records)
    capsys.readouterr()
    assert _train(smaller, run, "--resume") == 1
    one_line_error(capsys, "no longer in the cache")


def test_resume_logs_every_step_once(sphere_cache, tmp_path):
    from imface.train.rundir import RunDir

    run = RunDir(tmp_path / "run")
    assert _train(sphere_cache, run.root, "--log-every", "1", "--max-steps", "3") == 0
    with open(run.log, "a") as f:  # as if killed after logging steps 4-5 but before saving them
        f.write(json.dumps({"step": 4, "total": 1.0}) + "\n" + json.dumps({"step": 5, "total": 1.0}) + "\n")
        f.write('{"step": 6, "tot')  # and mid-line
    assert _train(sphere_cache, run.root, "--resume", "--log-every", "1", "--max-steps", "6") == 0
    assert [r["step"] for r in run.read_log()] == [1, 2, 3, 4, 5, 6]
    assert all(json.loads(line)["total"] != 1.0 for line in run.log.read_text().splitlines()[3:])


def test_new_run_refuses_a_folder_holding_a_run(sphere_cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(sphere_cache, run) == 0
    before = (run / "config.json").read_bytes()
    capsys.readouterr()
    assert _train(sphere_cache, run, "--epochs", "7") == 1
    one_line_error(capsys, "already holds a run")
    assert (run / "config.json").read_bytes() == before


# -- fit: the output is checked before the fit starts ---------------------------------------------
def _face_scan(path: Path) -> Path:
    """A ball of a head's size in mm: a readable mesh that alignment rejects as not a face."""
    trimesh.creation.icosphere(3, radius=80).export(path)
    return path


@pytest.mark.parametrize(
    "out, message", [("/proc/imface-fit.ply", "cannot write"), ("out.txt", "unsupported output")]
)
def test_fit_refuses_a_bad_output_before_fitting(
    good_checkpoint, tmp_path, monkeypatch, capsys, out, message
):
    import imface.fit.cli as fit_cli

    def must_not_run(*args, **kwargs):
        raise AssertionError("the fit started")

    monkeypatch.setattr(fit_cli, "fit_scan_job", must_not_run)
    monkeypatch.chdir(tmp_path)
    scan = _face_scan(tmp_path / "scan.ply")
    assert main(["fit", str(scan), "--out", out, "--checkpoint", str(good_checkpoint)]) == 1
    one_line_error(capsys, out, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.ply"]


def test_fit_messages_name_the_scan(good_checkpoint, tmp_path, capsys):
    cloud = tmp_path / "cloud.xyz"
    np.savetxt(cloud, np.random.default_rng(0).normal(size=(500, 3)) * 50)
    out = tmp_path / "fitted.ply"
    assert main(["fit", str(cloud), "--out", str(out), "--checkpoint", str(good_checkpoint)]) == 1
    one_line_error(capsys, "cloud.xyz", "does not look like a face")  # point clouds are fitted, not this one
    ball = _face_scan(tmp_path / "ball.stl")
    assert main(["fit", str(ball), "--out", str(out), "--checkpoint", str(good_checkpoint)]) == 1
    one_line_error(capsys, "ball.stl", "does not look like a face")
    assert not out.exists()


# -- scans (the editor's scan loader) ---------------------------------------------------------------
def _bad_scans(root: Path) -> dict[str, str]:
    """file name -> the problem its message must name."""
    (root / "empty.ply").write_bytes(b"")
    (root / "garbage.ply").write_bytes(bytes(range(256)) * 4)
    np.savetxt(root / "nan.xyz", np.full((200, 3), np.nan))
    np.savetxt(root / "few.xyz", np.zeros((5, 3)))
    np.save(root / "shape.npy", np.zeros((10, 2)))
    (root / "folder.ply").mkdir()
    (root / "scan.docx").write_text("x")
    (root / "loop.ply").symlink_to(root / "loop.ply")
    (root / "dangling.ply").symlink_to(root / "nothing.ply")
    return {
        "empty.ply": "empty",
        "garbage.ply": "cannot read",
        "nan.xyz": "NaN",
        "few.xyz": "only 5 points",
        "shape.npy": "expected an (N, 3) array",
        "folder.ply": "is a folder",
        "scan.docx": "unsupported file type",
        "loop.ply": "symlink loop",
        "dangling.ply": "broken symlink",
        "missing.ply": "no such file",
    }


def test_every_bad_scan_is_one_line_naming_the_file(tmp_path):
    from imface.scan.load import load_scan

    for name, problem in _bad_scans(tmp_path).items():
        with pytest.raises(MeshError) as caught:
            load_scan(tmp_path / name)
        message = str(caught.value)
        assert name in message and problem in message and "\n" not in message, message
