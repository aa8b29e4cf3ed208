"""Auto-decoder training: losses go down, resume is exact, checkpoints load."""

import numpy as np
import pytest
import torch

from imface.config import ModelConfig, TrainConfig
from imface.io import load_checkpoint
from imface.train import MODEL_FILE, STATE_FILE, Dist, Trainer


class SphereCorpus:
    """A stand-in for a prepared corpus: each identity a sphere, each expression a shift of it."""

    root = "spheres"

    def __init__(self, identities=2, expressions=3, surface=512, space=256):
        rng = np.random.default_rng(0)
        self.scans, self.arrays = [], {}
        for i in range(identities):
            radius = 0.35 + 0.1 * i
            for e in range(expressions):
                key = f"{i:03d}/{e + 1}_expr"
                centre = np.array([0.0, 0.05 * e, 0.0])
                self.scans.append(
                    {"key": key, "identity": f"{i:03d}", "expression": f"{e + 1}_expr", "neutral": e == 0}
                )
                self.arrays[key] = self._samples(rng, centre, radius, surface, space)

    @staticmethod
    def _samples(rng, centre, radius, surface, space):
        normals = rng.normal(size=(surface, 3))
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        points = rng.uniform(-1, 1, size=(space, 3))
        directions = np.array([[-1, 1, 1], [1, 1, 1], [0, 0, 1], [-1, -1, 1], [1, -1, 1]], float)
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        return {
            "surface_points": (centre + radius * normals).astype(np.float32),
            "surface_normals": normals.astype(np.float32),
            "space_points": points.astype(np.float32),
            "space_sdf": (np.linalg.norm(points - centre, axis=1) - radius).astype(np.float32),
            "landmarks5": (centre + radius * directions).astype(np.float32),
        }

    def load(self, key):
        return self.arrays[key]


def sphere_training_set():
    from imface.train import TrainingSet

    corpus = SphereCorpus()
    keys = [r["key"] for r in corpus.scans]
    records = {r["key"]: r for r in corpus.scans}
    names = sorted({r["identity"] for r in corpus.scans})
    identity_of_scan = np.array([names.index(records[k]["identity"]) for k in keys])
    exp_index, labels = np.full(len(keys), -1), []
    for i, k in enumerate(keys):
        if not records[k]["neutral"]:
            exp_index[i] = len(labels)
            labels.append(records[k]["expression"])
    neutral = TrainingSet._neutral_landmarks(corpus, keys, records, identity_of_scan, len(names))
    return TrainingSet(corpus, keys, names, identity_of_scan, exp_index, labels, neutral)


def tiny_config(**overrides):
    cfg = TrainConfig(model=ModelConfig.tiny(), scans_per_batch=2, points_per_scan=256, lr=1e-3, code_lr=1e-3)
    cfg.checkpoint_every = 1000
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def test_training_reduces_the_loss_and_saves_a_loadable_checkpoint(tmp_path):
    trainer = Trainer(tiny_config(epochs=40), sphere_training_set(), tmp_path, Dist())
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
def test_resume_continues_exactly(tmp_path, detail):
    cfg = tiny_config(epochs=10)
    cfg.model.detail = detail
    full = Trainer(cfg, sphere_training_set(), tmp_path / "full", Dist())
    (tmp_path / "full").mkdir()
    full.run(max_steps=6)

    (tmp_path / "split").mkdir()
    first = Trainer(cfg, sphere_training_set(), tmp_path / "split", Dist())
    first.run(max_steps=3)
    assert (tmp_path / "split" / STATE_FILE).exists()
    second = Trainer(cfg, sphere_training_set(), tmp_path / "split", Dist())
    assert second.resume() and second.step == 3
    second.run(max_steps=6)
    for (name, a), b in zip(
        full.decoder.state_dict().items(), second.decoder.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
