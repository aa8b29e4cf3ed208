"""The height-field term: faces of random codes keep the targets' order along +z."""

import pytest
import torch

from imface.config import ModelConfig
from imface.model import Codes
from imface.train.losses import HEIGHT_STEP, AutoDecoder, height_field_error, random_codes, random_faces
from imface.train.trainer import Dist, Trainer
from tests.test_train import sphere_training_set, tiny_config, write_sphere_cache


def _decoder(seed=0):
    torch.manual_seed(seed)
    exp_index = torch.tensor([-1, 0, -1, 1])  # two people, a neutral and an expressive scan each
    decoder = AutoDecoder(ModelConfig.tiny(), identities=2, scans=4, exp_index=exp_index, init_std=0.3)
    for p in (decoder.id_codes, decoder.exp_codes):
        p.requires_grad_(False)
    return decoder


def _draw(decoder, seed, points=256):
    generator = torch.Generator().manual_seed(seed)
    return random_faces(generator, 4, points, decoder.id_codes.shape[1], decoder.exp_codes.shape[0])


def _crossings(decoder, batch):
    """Share of points of the batch's faces where the SDF crosses from + to - going +z."""
    model = decoder.model
    codes = random_codes(decoder, batch)
    crossings = []
    with torch.no_grad():
        for face in range(codes.num_faces):
            x = batch["random_points"][face]
            single = model.prepare(Codes(codes.z_id[face], codes.z_exp[face]))
            s0 = model.query(x, single, detail=False).coarse_sdf
            s1 = model.query(x + torch.tensor([0.0, 0.0, HEIGHT_STEP]), single, detail=False).coarse_sdf
            crossings.append(((s0 > 0) & (s1 < 0)).float().mean())
    return float(torch.stack(crossings).mean())


def test_random_faces_are_drawn_from_the_generator_inside_the_region():
    decoder = _decoder()
    a, b = _draw(decoder, 3), _draw(decoder, 3)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert float(a["random_points"].norm(dim=-1).max()) <= 1.0
    assert float(a["random_noise"].abs().max()) <= 3.0
    assert set(a["random_expression"].tolist()) <= {-1, 0, 1}


def _plant_a_ball(decoder, steps=60):
    """Teach the faces a ball's SDF: columns through it cross from + to - at its bottom."""
    model = decoder.model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
        batch = _draw(decoder, 10_000 + step)
        z_id = random_codes(decoder, batch).z_id  # the ball on every face, without expressions
        points = batch["random_points"]
        index = torch.arange(4).repeat_interleave(points.shape[1])
        prep = model.prepare(Codes(z_id, torch.zeros(4, decoder.exp_codes.shape[1])))
        sdf = model.query(points.reshape(-1, 3), prep, index, detail=False).coarse_sdf
        loss = (sdf - (points.reshape(-1, 3).norm(dim=-1) - 0.5)).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_the_term_orders_faces_of_codes_it_never_drew():
    decoder = _decoder()
    _plant_a_ball(decoder)
    held = _draw(decoder, seed=999, points=2048)  # other codes, other points
    before = _crossings(decoder, held)
    assert before > 0.002, before  # the points just under the ball
    optimizer = torch.optim.Adam(decoder.model.parameters(), lr=1e-3)
    for step in range(60):
        loss = height_field_error(decoder, _draw(decoder, step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = _crossings(decoder, held)
    assert after < 0.3 * before, (before, after)


@pytest.fixture(scope="module")
def sphere_cache(tmp_path_factory):
    return write_sphere_cache(tmp_path_factory.mktemp("cache"))


def test_training_draws_random_faces_and_logs_the_term(tmp_path, sphere_cache):
    cfg = tiny_config(epochs=4, random_faces=2, random_face_points=64)
    cfg.losses.height_field = 100.0
    trainer = Trainer(cfg, sphere_training_set(sphere_cache), tmp_path, Dist())
    trainer.log_every = 1
    records = []
    trainer.run(max_steps=3, progress=records.append)
    assert len(records) == 3 and all(r["height_field"] >= 0 for r in records)


def test_a_corpus_of_one_person_draws_that_person():
    decoder = AutoDecoder(
        ModelConfig.tiny(), identities=1, scans=2, exp_index=torch.tensor([-1, 0]), init_std=0.3
    )
    assert torch.isfinite(height_field_error(decoder, _draw(decoder, 0)))
