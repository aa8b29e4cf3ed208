"""Checkpoints: bit-exact round trip, and one clear error for every kind of bad file."""

import pickle

import pytest
import torch

from imface.config import ModelConfig
from imface.errors import CheckpointError
from imface.io import TrainedCodes, load_checkpoint, save_checkpoint
from imface.model import ImFace
from tests.test_model import perturb


@pytest.fixture
def saved(tmp_path):
    cfg = ModelConfig.tiny(detail=True, deformation="se3")
    model = perturb(ImFace(cfg))
    codes = TrainedCodes(
        z_id=torch.randn(3, cfg.id_dim),
        z_exp=torch.randn(4, cfg.exp_dim),
        identity_labels=["001", "002", "003"],
        expression_labels=["2_smile", "3_mouth_stretch", "2_smile", "16_grin"],
        expression_keys=["001/2_smile", "001/3_mouth_stretch", "002/2_smile", "003/16_grin"],
        expression_identity=[0, 0, 1, 2],
        z_detail=torch.randn(7, cfg.detail_dim),
    )
    path = save_checkpoint(tmp_path / "model.safetensors", model, codes, {"step": 12})
    return path, model, codes


def test_round_trip_is_bit_exact(saved):
    path, model, codes = saved
    ckpt = load_checkpoint(path)
    for (name, a), (_, b) in zip(model.state_dict().items(), ckpt.model.state_dict().items(), strict=False):
        assert torch.equal(a, b), name
    assert torch.equal(ckpt.codes.z_id, codes.z_id)
    assert torch.equal(ckpt.codes.z_exp, codes.z_exp)
    assert torch.equal(ckpt.codes.z_detail, codes.z_detail)
    assert ckpt.codes.expression_labels == codes.expression_labels
    assert ckpt.config == model.config
    assert ckpt.meta == {"step": 12}
    assert len(ckpt.sha256) == 64
    points = torch.rand(50, 3)
    face = codes.face(1, 2)
    torch.testing.assert_close(model(points, None, face).sdf, ckpt.model(points, None, face).sdf)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.01])
def test_truncated_file(saved, keep):
    path = saved[0]
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_checkpoint(path)


def test_pickle_files_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps(Exploit()))
    torch_file = tmp_path / "torch.pt"
    torch.save({"weights": torch.zeros(2)}, torch_file)
    for path in (plain, torch_file):
        with pytest.raises(CheckpointError, match="never unpickled"):
            load_checkpoint(path)
    assert not marker.exists()


def test_config_that_does_not_match_the_tensors(saved, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = saved[0]
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    import json

    config = json.loads(metadata["config"])
    config["siren_width"] = 24
    metadata["config"] = json.dumps(config)
    bad = tmp_path / "mismatch.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(CheckpointError, match="mismatch.safetensors: config does not match"):
        load_checkpoint(bad)


def test_other_safetensors_and_garbage(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(3)}, str(other))
    with pytest.raises(CheckpointError, match="not an ImFace checkpoint"):
        load_checkpoint(other)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_checkpoint(garbage)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(empty)


def test_interrupted_save_leaves_the_old_checkpoint(saved, monkeypatch):
    path, model, codes = saved
    before = path.read_bytes()
    import safetensors.torch

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, model, codes)
    assert path.read_bytes() == before
