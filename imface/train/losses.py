"""Training losses of ImFace / ImFace++ (IMFACE.md § Training), on one batch of scans.

`AutoDecoder` holds the network and the per-person / per-scan codes, so one module (and one
DistributedDataParallel wrapper) sees every trainable tensor; its forward returns the weighted
loss terms of a batch.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from imface.config import LossWeights, ModelConfig
from imface.model import Codes, ImFace, spatial_gradient
from imface.model.imface import PreparedCodes


class AutoDecoder(nn.Module):
    """The network plus its code tables: one identity code per person, one expression code per
    non-neutral scan, and (ImFace++) one detail code per scan."""

    def __init__(self, config: ModelConfig, identities: int, scans: int, exp_index: Tensor, init_std: float):
        super().__init__()
        self.model = ImFace(config)
        self.id_codes = nn.Parameter(torch.randn(identities, config.id_dim) * init_std)
        self.exp_codes = nn.Parameter(
            torch.randn(max(int((exp_index >= 0).sum()), 1), config.exp_dim) * init_std
        )
        # scan -> row of exp_codes, -1 for neutral scans
        self.register_buffer("exp_index", exp_index.long().clone())
        self.detail_codes = (
            nn.Parameter(torch.randn(scans, config.detail_dim) * init_std) if config.detail else None
        )

    def batch_codes(self, scan: Tensor, identity: Tensor) -> Codes:
        rows = self.exp_index[scan]
        neutral = rows < 0
        z_exp = self.exp_codes[rows.clamp(min=0)] * (~neutral).unsqueeze(-1)
        z_detail = None if self.detail_codes is None else self.detail_codes[scan]
        return Codes(self.id_codes[identity], z_exp, neutral, z_detail)

    def forward(self, batch: dict[str, Tensor], weights: LossWeights, detail_ramp: float = 0.0):
        return batch_losses(self, batch, weights, detail_ramp)


def cosine_ramp(epoch: float, start: float, length: float) -> float:
    """0 before `start`, then a half-cosine rise to 1 over `length` epochs (ImFace++ schedule)."""
    if epoch < start:
        return 0.0
    if length <= 0:
        return 1.0
    t = min((epoch - start) / length, 1.0)
    return 0.5 - 0.5 * math.cos(math.pi * t)


def _points(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, int]:
    """All points of the batch, flat, scan-major: surface points first, then space points."""
    surface, space = batch["surface_points"], batch["space_points"]
    points = torch.cat([surface, space], dim=1)
    b, p = points.shape[:2]
    index = torch.arange(b, device=points.device).repeat_interleave(p)
    return points.reshape(-1, 3), index, surface.shape[1]


def batch_losses(
    decoder: AutoDecoder, batch: dict[str, Tensor], w: LossWeights, detail_ramp: float = 0.0
) -> dict[str, Tensor]:
    """Weighted loss terms (each a scalar tensor) and their sum under "total"."""
    model = decoder.model
    codes = decoder.batch_codes(batch["scan"], batch["identity"])
    points, index, n_surface = _points(batch)
    points = points.detach().requires_grad_(True)
    b = batch["surface_points"].shape[0]
    use_detail = model.detail_field is not None and detail_ramp > 0
    # the hyper nets generate every local net's weights from the codes: once per step, shared by
    # every term below (they were 4 of the step's 10 network passes)
    prep = model.prepare(codes)
    out = model.query(points, prep, index, detail=use_detail, neutral_displacement=bool(codes.neutral.any()))

    per_scan = lambda t: t.view(b, -1, *t.shape[1:])  # noqa: E731
    terms: dict[str, Tensor] = {}
    coarse = out.coarse_sdf
    grad = spatial_gradient(coarse, points, create_graph=True)
    _surface_terms(terms, per_scan(coarse), per_scan(grad), batch, n_surface, w, prefix="")
    terms["eikonal"] = w.eikonal * (grad.norm(dim=-1) - 1).abs().mean()
    terms["eikonal_canonical"] = w.eikonal_canonical * _canonical_eikonal(model, out, prep, index)
    terms["correction"] = w.correction * out.correction.abs().mean()
    if out.neutral_displacement is not None:
        neutral_points = codes.neutral[index]
        terms["neutral_suppression"] = (
            w.neutral_suppression * out.neutral_displacement[neutral_points].norm(dim=-1).mean()
        )
    terms.update(_landmark_terms(model, prep, batch, w))
    if decoder.id_codes.requires_grad:  # tied codes are fixed: nothing to regularise
        terms["embedding"] = w.embedding * _embedding(codes)
    if "corr_points" in batch and bool(batch["corr_has"].any()):
        terms.update(correspondence_terms(model, prep, batch, w))
    if "between_points" in batch and bool(batch["between_has"].any()):
        terms["correspondence_between"] = w.correspondence_between * between_error(model, codes, batch)
    if "random_points" in batch:
        terms["height_field"] = w.height_field * height_field_error(decoder, batch)
    if use_detail:
        fine_grad = spatial_gradient(out.sdf, points, create_graph=True)
        detail_terms: dict[str, Tensor] = {}
        _surface_terms(detail_terms, per_scan(out.sdf), per_scan(fine_grad), batch, n_surface, w, "detail_")
        for name, value in detail_terms.items():
            terms[name] = detail_ramp * value
        terms["detail_embedding"] = detail_ramp * w.detail_embedding * codes.z_detail.pow(2).mean()
    terms["total"] = sum(terms.values())
    return terms


def _surface_terms(terms, sdf, grad, batch, n_surface, w: LossWeights, prefix: str) -> None:
    """SDF L1 on surface (target 0) and space points (target: their signed distance); normal
    alignment 1 - cos on surface points."""
    sdf_weight = w.detail_sdf if prefix else w.sdf
    normal_weight = w.detail_normal if prefix else w.normal
    on_surface = sdf[:, :n_surface].abs().mean()
    off_surface = (sdf[:, n_surface:] - batch["space_sdf"]).abs().mean()
    terms[prefix + "sdf"] = sdf_weight * 0.5 * (on_surface + off_surface)
    cos = torch.nn.functional.cosine_similarity(grad[:, :n_surface], batch["surface_normals"], dim=-1)
    terms[prefix + "normal"] = normal_weight * (1 - cos).mean()


def _canonical_eikonal(model: ImFace, out, prep: PreparedCodes, index: Tensor) -> Tensor:
    """|grad_p' s - 1| in canonical space: the neutral face must be an SDF too. Evaluated on a
    subsample of the (detached) canonical points to keep the cost down."""
    stride = 4
    canonical = out.canonical.detach()[::stride].requires_grad_(True)
    sub_index = index[::stride]
    s = model.query(canonical, as_neutral(prep), sub_index, detail=False).coarse_sdf
    grad = spatial_gradient(s, canonical, create_graph=True)
    return (grad.norm(dim=-1) - 1).abs().mean()


def as_neutral(prep: PreparedCodes) -> PreparedCodes:
    """The same faces without their expressions (canonical space): ExpNet is skipped."""
    codes = prep.codes
    neutral = Codes(codes.z_id, codes.z_exp, torch.ones_like(codes.neutral), None)
    empty = prep.expressive[:0]
    return dataclasses.replace(
        prep, codes=neutral, expressive=empty, exp_layers=[], exp_landmarks=prep.neutral_landmarks
    )


def _landmark_terms(model: ImFace, prep: PreparedCodes, batch, w: LossWeights) -> dict[str, Tensor]:
    """Landmark generation (eta, eta') and consistency: E(l) -> l', I(E(l)) -> template."""
    codes = prep.codes
    observed, neutral_gt = batch["landmarks5"], batch["neutral_landmarks5"]
    expressive = ~codes.neutral
    terms = {"landmark_neutral": w.landmark_neutral * (prep.neutral_landmarks - neutral_gt).abs().mean()}
    if expressive.any():
        error = (prep.exp_landmarks[expressive] - observed[expressive]).abs().mean()
        terms["landmark"] = w.landmark * error
    b, n = observed.shape[:2]
    index = torch.arange(b, device=observed.device).repeat_interleave(n)
    out = model.query(observed.reshape(-1, 3), prep, index, detail=False)
    canonical_error = (out.canonical.view(b, n, 3) - neutral_gt).abs().mean()
    template_error = (out.template.view(b, n, 3) - model.template_landmarks).abs().mean()
    terms["landmark_consistency"] = w.landmark_consistency * (canonical_error + template_error)
    return terms


def correspondence_terms(model: ImFace, prep: PreparedCodes, batch, w: LossWeights) -> dict[str, Tensor]:
    """L1 between where the warps send registered points and where their registrations say
    they belong: E(p) -> the person's neutral point, I(E(p)) -> the template point. Only the
    warps are evaluated (no SDF, no spatial gradient); scans without a registration count 0."""
    points = batch["corr_points"]
    b, k = points.shape[:2]
    index = torch.arange(b, device=points.device).repeat_interleave(k)
    out = model.query(points.reshape(-1, 3), prep, index, detail=False)
    has = batch["corr_has"]
    canonical_error = (out.canonical.view(b, k, 3)[has] - batch["corr_canonical"][has]).abs().mean()
    template_error = (out.template.view(b, k, 3)[has] - batch["corr_template"][has]).abs().mean()
    return {
        "correspondence_expression": w.correspondence_expression * canonical_error,
        "correspondence_template": w.correspondence_template * template_error,
    }


def between_error(model: ImFace, codes: Codes, batch) -> Tensor:
    """L1 of the warps on blends of each scan with the next one of the batch (registrations and
    codes blended alike, `Registrations.sample(between=True)`): ExpNet -> the blended neutral
    point, the whole chain -> the template point."""
    t = batch["between_t"].unsqueeze(-1)
    partner = torch.roll(torch.arange(len(t), device=t.device), -1)
    blend = lambda z: (1 - t) * z + t * z[partner]  # noqa: E731
    mixed = Codes(blend(codes.z_id), blend(codes.z_exp), codes.neutral & codes.neutral[partner])
    points = batch["between_points"]
    b, k = points.shape[:2]
    index = torch.arange(b, device=points.device).repeat_interleave(k)
    out = model.query(points.reshape(-1, 3), model.prepare(mixed), index, detail=False)
    has = batch["between_has"]
    canonical = (out.canonical.view(b, k, 3)[has] - batch["between_canonical"][has]).abs().mean()
    template = (out.template.view(b, k, 3)[has] - batch["corr_template"][has]).abs().mean()
    return canonical + template


# Height-field order: the targets are signed distances to a height field over (x, y) (the
# pseudo-watertight sheet, imface/samples/preprocess.py), so every column along +z (towards the
# viewer) crosses the surface once, from behind (-) to in front (+). Faces of codes between and
# beyond the training people must keep that: a pocket inside the head or a piece floating in front
# is a crossing from + to - going +z. Only such crossings count, not the slope: inside the head the
# warps may fold space (an open jaw does) as long as the SDF stays negative there.
HEIGHT_STEP = 0.03  # 3 mm between the two points of a pair


def random_faces(
    generator: torch.Generator, faces: int, points: int, id_dim: int, expressions: int
) -> dict[str, Tensor]:
    """What the height-field term draws each step: identity noise (in std units, clipped at 3),
    a training expression per face (-1: the zero code) and points uniform in the unit sphere."""
    direction = torch.nn.functional.normalize(torch.randn(faces, points, 3, generator=generator), dim=-1)
    radius = torch.rand(faces, points, 1, generator=generator) ** (1 / 3)
    return {
        "random_noise": torch.randn(faces, id_dim, generator=generator).clamp(-3, 3),
        "random_expression": torch.randint(-1, expressions, (faces,), generator=generator),
        "random_points": direction * radius,
    }


def random_codes(decoder: AutoDecoder, batch) -> Codes:
    """The codes of `random_faces`' draw: identity codes spread like the training people's (per
    dimension, out to +-3 std) with training expression codes (or zero)."""
    ids = decoder.id_codes.detach()
    spread = ids.std(0) if len(ids) > 1 else torch.zeros_like(ids[0])
    z_id = ids.mean(0) + batch["random_noise"] * spread
    rows = batch["random_expression"]
    z_exp = decoder.exp_codes.detach()[rows.clamp(min=0)] * (rows >= 0).unsqueeze(-1)
    return Codes(z_id, z_exp)


def height_field_error(decoder: AutoDecoder, batch) -> Tensor:
    """Mean size of the + to - crossings going +z (in units of the step) on the faces of
    `random_codes`."""
    model = decoder.model
    prep = model.prepare(random_codes(decoder, batch))
    points = batch["random_points"]
    f, p = points.shape[:2]
    index = torch.arange(f, device=points.device).repeat_interleave(2 * p)
    lifted = points + points.new_tensor([0.0, 0.0, HEIGHT_STEP])
    both = torch.cat([points, lifted], dim=1).reshape(-1, 3)
    sdf = model.query(both, prep, index, detail=False).coarse_sdf.view(f, 2, p)
    below, above = sdf[:, 0], sdf[:, 1]
    return (torch.minimum(torch.relu(below), torch.relu(-above)) / HEIGHT_STEP).mean()


def _embedding(codes: Codes) -> Tensor:
    z_exp = codes.z_exp[~codes.neutral]
    value = codes.z_id.pow(2).mean()
    if z_exp.numel():
        value = value + z_exp.pow(2).mean()
    return value
