"""Correspondence supervision: registered points pull the warps to one template point."""

import json

import numpy as np
import pytest
import torch
import trimesh

from imface.model import Codes
from imface.train.trainer import Dist, Trainer
from imface.train.training_set import TrainingSet
from tests.test_train import tiny_config, write_sphere_cache

SAMPLE_KEYS = ("surface_points", "surface_normals", "space_points", "space_sdf")
TURN = np.radians(40.0)  # person 1's registration is turned about z against person 0's


def _rotation(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def write_registered_sphere_cache(root, identities=2, expressions=2):
    """The spheres of test_train, now with a registered mesh per scan. A sphere looks the same
    however it is turned, so the SDF cannot tell where a registered point belongs: only the
    correspondence losses can line the people up in template space."""
    write_sphere_cache(root, identities, expressions)
    ico = trimesh.creation.icosphere(2)
    np.save(root / "registered_faces.npy", ico.faces.astype(np.int32))
    for i in range(identities):
        for e in range(expressions):
            centre, radius = np.array([0.0, 0.05 * e, 0.0]), 0.35 + 0.1 * i  # as write_sphere_cache
            registered = centre + radius * ico.vertices @ _rotation(TURN * i).T
            np.save(root / f"{i:03d}/{e + 1}_expr/registered_vertices.npy", registered.astype(np.float32))
    return root, ico


@pytest.fixture(scope="module")
def registered_cache(tmp_path_factory):
    return write_registered_sphere_cache(tmp_path_factory.mktemp("registered"))


def template_gap(trainer, cache_faces, root):
    """Mean distance in template space between the same registered vertex of the two people's
    neutral scans (0 when the warps put corresponding points together)."""
    data, decoder = trainer.data, trainer.decoder
    neutral = [i for i, key in enumerate(data.keys) if key.endswith("1_expr")]
    points = []
    for scan in neutral:
        points.append(torch.from_numpy(np.load(root / data.keys[scan] / "registered_vertices.npy")))
    with torch.no_grad():
        ids = torch.tensor([data.identity_of_scan[s] for s in neutral])
        codes = Codes(
            decoder.id_codes[ids], torch.zeros(2, decoder.exp_codes.shape[1]), torch.ones(2, dtype=bool)
        )
        prep = decoder.model.prepare(codes)
        stacked = torch.cat(points)
        index = torch.arange(2).repeat_interleave(points[0].shape[0])
        template = decoder.model.query(stacked, prep, index, detail=False).template.view(2, -1, 3)
    return float((template[0] - template[1]).norm(dim=-1).mean())


def _train(root, correspondence_points, steps=120):
    torch.manual_seed(0)
    cfg = tiny_config(epochs=1000, correspondence_points=correspondence_points, lr=3e-3, code_lr=3e-3)
    # the spheres' landmarks are not turned with the registrations: leave them out of the test so
    # that the warps hear only the correspondences
    cfg.losses.landmark_consistency = 0.0
    run_dir = root.parent / f"{root.name}-run{correspondence_points}"
    run_dir.mkdir(exist_ok=True)
    trainer = Trainer(cfg, TrainingSet.open(root, test_identities=0, seed=0), run_dir, Dist())
    trainer.run(max_steps=steps)
    return trainer


def test_training_set_reads_registrations_and_a_template(registered_cache):
    root, ico = registered_cache
    data = TrainingSet.open(root, test_identities=0, seed=0)
    reg = data.registrations
    assert reg is not None and reg.template.shape == ico.vertices.shape
    # the template is the mean of the two people's neutral registrations
    expected = np.mean([np.load(root / f"{i:03d}/1_expr/registered_vertices.npy") for i in range(2)], axis=0)
    np.testing.assert_allclose(reg.template, expected, atol=1e-6)
    samples = reg.sample(np.array([0, 1, 2]), 16, torch.Generator().manual_seed(0))
    assert samples["corr_points"].shape == (3, 16, 3) and bool(samples["corr_has"].all())
    # a neutral scan's canonical target is the point itself
    torch.testing.assert_close(samples["corr_points"][0], samples["corr_canonical"][0])


def test_blends_of_two_scans_carry_the_blend_of_their_registrations(registered_cache):
    """`between`: each scan's points on (1 - t) reg + t reg_partner (the next scan of the batch),
    with the neutral blend as the canonical target, and the loss term reaches the training log."""
    root, _ = registered_cache
    data = TrainingSet.open(root, test_identities=0, seed=0)
    scans = np.array([data.keys.index("000/1_expr"), data.keys.index("001/1_expr")])
    s = data.registrations.sample(scans, 16, torch.Generator().manual_seed(0), between=True)
    t = s["between_t"][0]
    # person 1's registration is person 0's scaled by 0.45 / 0.35 and turned: the same
    # (triangle, barycentric) point on it is that map of person 0's point
    partner = s["corr_points"][0] * (0.45 / 0.35) @ torch.from_numpy(_rotation(TURN).T).float()
    expected = (1 - t) * s["corr_points"][0] + t * partner
    torch.testing.assert_close(s["between_points"][0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(s["between_canonical"][0], expected, atol=1e-5, rtol=0)  # both neutral
    assert bool(s["between_has"].all())

    cfg = tiny_config(correspondence_points=8)
    cfg.losses.correspondence_between = 1000.0
    run = root.parent / "between-run"
    run.mkdir(exist_ok=True)
    Trainer(cfg, data, run, Dist(), log_every=1).run(max_steps=2)
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(r["correspondence_between"] > 0 for r in logged if "step" in r)


def test_correspondence_loss_pulls_corresponding_points_together(registered_cache):
    root, ico = registered_cache
    without = _train(root, correspondence_points=0)
    with_loss = _train(root, correspondence_points=128)
    gap_without = template_gap(without, ico.faces, root)
    gap_with = template_gap(with_loss, ico.faces, root)
    # the turned registrations start ~0.3 apart; the SDF alone cannot see the turn
    assert gap_without > 0.2, gap_without
    # (measured: 0.14 against 0.24 after 120 steps; without any effect the two would be equal)
    assert gap_with < 0.65 * gap_without, (gap_with, gap_without)


def test_held_out_people_never_reach_training(tmp_path):
    """Neither their SDF samples, nor their registrations (the correspondence template is the
    mean of the *training* people's neutral scans), nor a code in the checkpoint."""
    from imface.io import load_checkpoint
    from imface.samples.cache import Corpus

    root = tmp_path / "cache"
    root.mkdir()
    write_registered_sphere_cache(root, identities=3, expressions=2)
    data = TrainingSet.open(root, test_identities=1, seed=0)
    corpus = Corpus.open(root)
    _, test_keys = corpus.split(1, 0)
    held_out = {corpus.record(k)["identity"] for k in test_keys}
    assert len(held_out) == 1 and not held_out & set(data.identity_names)
    assert not set(test_keys) & set(data.keys)
    trained = [np.load(root / f"{p}/1_expr/registered_vertices.npy") for p in data.identity_names]
    np.testing.assert_allclose(data.registrations.template, np.mean(trained, axis=0), atol=1e-6)
    run = tmp_path / "run"
    run.mkdir()
    Trainer(tiny_config(correspondence_points=8), data, run, Dist()).run(max_steps=1)
    ckpt = load_checkpoint(run / "model.safetensors")
    assert not held_out & set(ckpt.codes.identity_labels)
    assert set(corpus.split_for(ckpt.codes.identity_labels)[1]) == set(test_keys)


def test_codes_tied_to_registrations_are_whitened_fixed_and_stored(tmp_path):
    """code_space "registrations": the codes are the registrations' PCA coordinates (std `scale`
    on the leading dimension, less on the others), training leaves them alone, the checkpoint
    carries the bases, and a fit starts from the linear face closest to the scan."""
    from imface.config import FitConfig
    from imface.fit.codes import fit_codes
    from imface.fit.scan import prior_std, starting_codes
    from imface.io import load_checkpoint

    root, _ = write_registered_sphere_cache(tmp_path / "cache", identities=3, expressions=2)
    for folder in root.glob("*/*_expr"):  # the spheres' "scans" are their registrations
        np.save(folder / "gt_vertices.npy", np.load(folder / "registered_vertices.npy"))
    cfg = tiny_config(epochs=1000, correspondence_points=32, code_space="registrations")
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, TrainingSet.open(root, test_identities=0, seed=0), tmp_path / "run", Dist())
    before = trainer.decoder.id_codes.detach().clone(), trainer.decoder.exp_codes.detach().clone()
    trainer.run(max_steps=4)
    assert torch.equal(before[0], trainer.decoder.id_codes)
    assert torch.equal(before[1], trainer.decoder.exp_codes)
    std = before[0].std(0)
    assert int((std > 1e-6).sum()) == 2  # three people span two directions
    assert abs(float(std[0]) - 0.2) < 1e-4 and 0 < float(std[1]) <= float(std[0])

    ckpt = load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert ckpt.basis is not None and ckpt.basis.identity.shape[0] == cfg.model.id_dim
    torch.testing.assert_close(ckpt.codes.z_id, before[0])
    # the linear face of the starting codes lies on the scan (person 2's neutral sphere)
    scan = np.load(root / "002/1_expr/registered_vertices.npy")
    z_id, z_exp = starting_codes(ckpt, scan, FitConfig())
    basis = ckpt.basis
    face = basis.face(z_id, z_exp)
    gap = np.median(np.abs(np.linalg.norm(face.numpy(), axis=1) - 0.55))
    mean_gap = np.median(np.abs(np.linalg.norm(basis.mean.numpy(), axis=1) - 0.55))
    assert gap < 0.2 * mean_gap, (gap, mean_gap)  # (measured: 0.011 against 0.10)

    # the fit keeps every code dimension within code_bound_std of its std (a huge step cannot
    # carry it past what the network was trained on)
    samples = {k: torch.from_numpy(np.load(root / "002/1_expr" / f"{k}.npy")) for k in SAMPLE_KEYS}
    cfg = FitConfig(iterations=3, lr=10.0, points_per_step=256, code_bound_std=3.0)
    fit = fit_codes(ckpt.model, samples, cfg, init_id=z_id, init_exp=z_exp, prior_std=prior_std(ckpt))
    for z, std in zip((fit.codes.z_id, fit.codes.z_exp), basis.code_std(), strict=True):
        assert bool((z.abs() <= 3.0 * std + 1e-6).all())
    assert float((fit.codes.z_id - z_id).abs().max()) > 0  # it did move


def test_a_checkpoint_whose_code_bases_do_not_fit_its_config_is_refused(tmp_path):
    from imface.config import ModelConfig
    from imface.errors import CheckpointError
    from imface.io import TrainedCodes, load_checkpoint, save_checkpoint
    from imface.model import ImFace
    from imface.model.basis import ShapeBasis

    config = ModelConfig.tiny()
    zeros = torch.zeros
    codes = TrainedCodes(zeros(2, config.id_dim), zeros(1, config.exp_dim), ["a", "b"], ["2_smile"])
    good = ShapeBasis(zeros(40, 3), zeros(config.id_dim, 40, 3), zeros(config.exp_dim, 40, 3))
    save_checkpoint(tmp_path / "good.safetensors", ImFace(config), codes, basis=good)
    assert load_checkpoint(tmp_path / "good.safetensors").basis is not None
    bad = ShapeBasis(zeros(40, 3), zeros(config.id_dim + 1, 40, 3), zeros(config.exp_dim, 40, 3))
    save_checkpoint(tmp_path / "bad.safetensors", ImFace(config), codes, basis=bad)
    with pytest.raises(CheckpointError, match="code bases"):
        load_checkpoint(tmp_path / "bad.safetensors")
