"""Auto-decoder training: losses go down, resume is exact, checkpoints load."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from imface.config import ModelConfig, TrainConfig
from imface.errors import UserError
from imface.io import load_checkpoint
from imface.train.trainer import MODEL_FILE, STATE_FILE, Dist, Trainer


def sphere_samples(rng, centre, radius, surface=512, space=256):
    """SDF samples of a sphere, as `prepare` would write them for a scan."""
    normals = rng.normal(size=(surface, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    points = rng.uniform(-1, 1, size=(space, 3))
    directions = np.array([[-1, 1, 1], [1, 1, 1], [0, 0, 1], [-1, -1, 1], [1, -1, 1]], float)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    distance = np.linalg.norm(points - centre, axis=1)
    return {
        "surface_points": (centre + radius * normals).astype(np.float32),
        "surface_normals": normals.astype(np.float32),
        "space_points": points.astype(np.float32),
        "space_sdf": (distance - radius).astype(np.float32),
        "space_grad": ((points - centre) / distance[:, None]).astype(np.float32),
        "landmarks5": (centre + radius * directions).astype(np.float32),
    }


def write_sphere_cache(root, identities=2, expressions=3):
    """A real prepared cache whose people are spheres and whose expressions shift them."""
    from imface.samples.cache import write_index

    rng = np.random.default_rng(0)
    records = []
    for i in range(identities):
        for e in range(expressions):
            key = f"{i:03d}/{e + 1}_expr"
            records.append(
                {
                    "key": key,
                    "identity": f"{i:03d}",
                    "expression": f"{e + 1}_expr",
                    "neutral": e == 0,
                    "dir": key,
                }
            )
            folder = root / key
            folder.mkdir(parents=True)
            for name, value in sphere_samples(rng, np.array([0.0, 0.05 * e, 0.0]), 0.35 + 0.1 * i).items():
                np.save(folder / f"{name}.npy", value)
    write_index(root, records)
    return root


@pytest.fixture(scope="module")
def sphere_cache(tmp_path_factory):
    return write_sphere_cache(tmp_path_factory.mktemp("cache"))


def sphere_training_set(cache):
    from imface.train.training_set import TrainingSet

    return TrainingSet.open(cache, test_identities=0, seed=0)


def tiny_config(**overrides):
    cfg = TrainConfig(model=ModelConfig.tiny(), scans_per_batch=2, points_per_scan=256, lr=1e-3, code_lr=1e-3)
    cfg.checkpoint_every = 1000
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def test_training_reduces_the_loss_and_saves_a_loadable_checkpoint(tmp_path, sphere_cache):
    trainer = Trainer(tiny_config(epochs=40), sphere_training_set(sphere_cache), tmp_path, Dist())
    records = []
    trainer.log_every = 1
    trainer.run(max_steps=60, progress=records.append)
    first = np.mean([r["sdf"] for r in records[:5]])
    last = np.mean([r["sdf"] for r in records[-5:]])
    assert last < 0.5 * first, (first, last)
    ckpt = load_checkpoint(tmp_path / MODEL_FILE)
    assert ckpt.codes.z_id.shape == (2, ckpt.config.id_dim)
    assert ckpt.codes.z_exp.shape == (4, ckpt.config.exp_dim)  # one per non-neutral scan
    assert ckpt.codes.expression_labels == ["2_expr", "3_expr"] * 2
    assert ckpt.meta["step"] == 60
    torch.testing.assert_close(
        ckpt.model.template_landmarks, torch.from_numpy(trainer.data.template_landmarks().numpy())
    )
    assert (tmp_path / "log.jsonl").exists()


@pytest.mark.parametrize("detail", [False, True])
def test_resume_continues_exactly(tmp_path, detail, sphere_cache):
    cfg = tiny_config(epochs=10)
    cfg.model.detail = detail
    full = Trainer(cfg, sphere_training_set(sphere_cache), tmp_path / "full", Dist())
    (tmp_path / "full").mkdir()
    full.run(max_steps=6)

    (tmp_path / "split").mkdir()
    first = Trainer(cfg, sphere_training_set(sphere_cache), tmp_path / "split", Dist())
    first.run(max_steps=3)
    assert (tmp_path / "split" / STATE_FILE).exists()
    second = Trainer(cfg, sphere_training_set(sphere_cache), tmp_path / "split", Dist())
    assert second.resume() and second.step == 3
    second.run(max_steps=6)
    for (name, a), b in zip(
        full.decoder.state_dict().items(), second.decoder.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def _train_command(cache, out, *extra):
    return [
        sys.executable,
        "-m",
        "imface",
        "train",
        "--corpus",
        str(cache),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--test-identities",
        "0",
        "--points-per-scan",
        "128",
        "--scans-per-batch",
        "2",
        "--device",
        "cpu",
        *extra,
    ]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def test_two_torchrun_processes_on_gloo(tmp_path, sphere_cache):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += _train_command(sphere_cache, out, "--max-steps", "4")[1:]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = load_checkpoint(out / MODEL_FILE)
    assert ckpt.meta["step"] == 4
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records and all(np.isfinite(r["total"]) for r in records)


def test_resume_after_sigkill_loses_at_most_one_interval(tmp_path, sphere_cache):
    out = tmp_path / "killed"
    cmd = _train_command(
        sphere_cache, out, "--max-steps", "400", "--checkpoint-every", "3", "--log-every", "1"
    )
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / "log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill somewhere after a few checkpoints, mid-interval
        if log.exists() and len(log.read_text().splitlines()) >= 8:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    logged = len(log.read_text().splitlines())
    saved_step = _state_step(out / STATE_FILE)
    assert logged - 3 <= saved_step <= logged  # lost at most one checkpoint interval
    resumed = subprocess.run(
        _train_command(sphere_cache, out, "--resume", "--max-steps", str(logged + 2), "--log-every", "1"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, logged + 3))  # the re-done steps are logged once, none missing
    assert load_checkpoint(out / MODEL_FILE).meta["step"] == logged + 2


def _state_step(path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return int(f.metadata()["step"])


def test_a_new_run_can_start_from_a_checkpoint_of_the_same_scans(tmp_path, sphere_cache):
    cfg = tiny_config(epochs=10)
    (tmp_path / "a").mkdir()
    first = Trainer(cfg, sphere_training_set(sphere_cache), tmp_path / "a", Dist())
    first.run(max_steps=3)
    (tmp_path / "b").mkdir()
    second = Trainer(cfg, sphere_training_set(sphere_cache), tmp_path / "b", Dist())
    second.start_from(tmp_path / "a" / MODEL_FILE)
    assert second.step == 3
    for (name, a), b in zip(
        first.decoder.state_dict().items(), second.decoder.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    other = tiny_config(epochs=10)
    other.model.siren_width = 8
    (tmp_path / "c").mkdir()
    with pytest.raises(UserError, match="model config differs"):
        Trainer(other, sphere_training_set(sphere_cache), tmp_path / "c", Dist()).start_from(
            tmp_path / "a" / MODEL_FILE
        )


def test_a_run_on_a_grown_corpus_starts_from_a_checkpoint_of_fewer_people(tmp_path, sphere_cache):
    from imface.train.training_set import TrainingSet

    cfg = tiny_config(epochs=10)
    one_person = [f"000/{e}_expr" for e in (1, 2, 3)]
    (tmp_path / "a").mkdir()
    first = Trainer(cfg, TrainingSet.open(sphere_cache, 0, 0, one_person), tmp_path / "a", Dist())
    first.run(max_steps=3)
    (tmp_path / "b").mkdir()
    grown = Trainer(cfg, sphere_training_set(sphere_cache), tmp_path / "b", Dist())
    fresh_codes = grown.decoder.id_codes.detach().clone()
    grown.start_from(tmp_path / "a" / MODEL_FILE)
    assert grown.step == 3
    assert torch.equal(grown.decoder.id_codes[0], first.decoder.id_codes[0])
    assert torch.equal(grown.decoder.id_codes[1], fresh_codes[1])  # the new person starts fresh
    assert torch.equal(grown.decoder.exp_codes[:2], first.decoder.exp_codes)
    for (name, a), b in zip(
        first.decoder.model.state_dict().items(), grown.decoder.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    # the other way round would train on a person the new run holds out
    grown.run(max_steps=4)
    (tmp_path / "d").mkdir()
    holding_out = Trainer(cfg, TrainingSet.open(sphere_cache, 0, 0, one_person), tmp_path / "d", Dist())
    with pytest.raises(UserError, match="held-out person would have been seen"):
        holding_out.start_from(tmp_path / "b" / MODEL_FILE)


def _train_holding_out(cache, out, people):
    command = [a for a in _train_command(cache, out, "--hold-out", people, "--max-steps", "1")]
    i = command.index("--test-identities")
    del command[i : i + 2]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)


def test_hold_out_names_the_held_out_people(tmp_path, sphere_cache):
    done = _train_holding_out(sphere_cache, tmp_path / "run", "001")
    assert done.returncode == 0, done.stderr
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["test_identities"] == ["001"]
    assert sorted(split["train_keys"]) == [f"000/{e}_expr" for e in (1, 2, 3)]
    refused = _train_holding_out(sphere_cache, tmp_path / "bad", "007")
    assert refused.returncode != 0 and "no person 007" in refused.stderr
