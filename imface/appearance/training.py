"""Fit the radiance field to a multi-view image set: ``train_job`` (a job of ``imface.jobs``).

1. Centre every ray's shell: rasterise the face mesh of the codes in every view.
2. Optional joint refinement of the codes (``code_steps``): photometric MSE + silhouette BCE on
   random ray batches through the whole ImFace forward (gradients reach the codes, the network
   stays frozen); rays follow the moving surface through their shells' expected depth.
3. Cache the shells: with the codes settled, the rays that hit the face get a sharp shell
   (``FieldConfig.shell``; refinement used the soft ``refine_shell``) whose samples' SDF and colour
   coordinates are computed once, so that
4. the colour network trains on thousands of batches at the cost of the small MLP alone.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from imface.appearance.radiance import (
    AppearanceResult,
    ColourNet,
    FieldConfig,
    RadianceField,
    face_surface,
    save_appearance,
    shell_mesh,
    view_centres,
)
from imface.appearance.render import composite, render_rays, shell_distances
from imface.appearance.transforms import ViewSet, find_transforms, read_transforms
from imface.errors import UserError
from imface.jobs import Job, Progress
from imface.paths import check_output_folder


@dataclass
class TrainOptions:
    steps: int = 300  # colour steps on the cached shells (from the projected base: minutes)
    code_steps: int = 100  # joint steps refining the codes first (0: keep the codes)
    rays: int = 2048  # rays per step
    lr: float = 5e-3  # colour network, decays tenfold over the run
    code_lr: float = 2e-5  # Adam step on the codes (the shipped codes spread ~0.013 per dim)
    silhouette: float = 0.05  # weight of the silhouette BCE (images with alpha only)
    time_limit: float | None = None  # seconds for the colour stage; it stops early and says so
    seed: int = 0


def train_job(
    images_dir,
    session,
    codes,
    out,
    config: FieldConfig | None = None,
    options: TrainOptions | None = None,
    views: ViewSet | None = None,
) -> Job[AppearanceResult]:
    """Fit the radiance field (and optionally refine the codes) to a multi-view image set; write
    the folder `out` (weights + JSON with the config and the refined codes)."""
    cfg = (config or FieldConfig()).validate()
    opt = options or TrainOptions()
    out = check_output_folder(out)
    yield Progress("Reading images", 0, None, str(images_dir))
    if views is None:
        views = read_transforms(find_transforms(images_dir), cfg.background)
    cfg = dataclasses.replace(cfg, background=views.background)
    if cfg.plane_resolution == 0:
        cfg = dataclasses.replace(cfg, plane_resolution=plane_resolution_for(views))
    torch.manual_seed(opt.seed)
    net = ColourNet(cfg)
    optimiser = torch.optim.Adam(net.parameters(), lr=opt.lr)
    start = time.perf_counter()
    yield Progress("Centring rays on the face", 0, None, f"{len(views)} views")
    mesh = shell_mesh(session, codes)
    table = _ray_table(views, view_centres(mesh, views.cameras, cfg.refine_shell))
    if len(table["centre"]) == 0:
        raise UserError(f"{images_dir}: the face at these codes is seen in none of the images")
    if cfg.projected_base:
        yield Progress("Projecting the images onto the face", 0, None)
        net.set_base(*_projected_base(session, codes, mesh, views, cfg.space))
    refined = codes
    if opt.code_steps > 0:
        refined = yield from _refine_codes(
            session, codes, net, optimiser, table, cfg, opt, views.alpha is not None
        )
        mesh = shell_mesh(session, refined)
        if cfg.projected_base:  # the face moved: project again, keep the correction learnt so far
            net.set_base(*_projected_base(session, refined, mesh, views, cfg.space), zero_correction=False)
    table = _ray_table(views, view_centres(mesh, views.cameras, cfg.shell))
    geometry_seconds = time.perf_counter() - start
    sdf, coords = yield from _cache_shells(session, refined, table, cfg)
    colour_start = time.perf_counter()
    steps, loss = yield from _train_colour(
        net, optimiser, table, sdf, coords, cfg, opt, views.alpha is not None
    )
    colour_seconds = time.perf_counter() - colour_start
    report = {
        "steps": steps,
        "steps_planned": opt.steps,
        "stopped_by_time_limit": steps < opt.steps,
        "code_steps": opt.code_steps,
        "train_seconds": round(time.perf_counter() - start, 2),
        "geometry_seconds": round(geometry_seconds, 2),
        "colour_seconds_per_step": round(colour_seconds / max(steps, 1), 4),
        "final_loss": loss,
        "rays_per_step": opt.rays,
        "rays_with_shell": int(len(table["centre"])),
        "views": len(views),
        "image_size": [views.cameras[0].width, views.cameras[0].height],
        "checkpoint_sha256": session.sha256,
    }
    field = RadianceField(net.eval(), cfg, refined, report)
    yield Progress("Saving appearance", 0, None, str(out))
    save_appearance(out, field, initial_codes=codes)
    return AppearanceResult(Path(out), field, report)


def _projected_base(session, codes, mesh, views: ViewSet, space: str):
    """The projection baseline's vertex colours at the vertices' colour coordinates."""
    from imface.appearance.projection import project_colours

    colours = project_colours(mesh, views)
    points = session.template_coordinates(codes, mesh.vertices) if space == "template" else mesh.vertices
    return points, colours


def plane_resolution_for(views: ViewSet) -> int:
    """Texels per plane side so that a texel is about the size of a pixel on the face (the
    planes span 2 model units), a power of two in 64..512."""
    footprint = np.median([np.linalg.norm(c.centre) / c.focal for c in views.cameras])
    return int(np.clip(2 ** np.round(np.log2(2.0 / footprint)), 64, 512))


def _ray_table(views: ViewSet, centres: list[np.ndarray]) -> dict[str, Tensor]:
    """Every ray that has a shell, across all views, as flat tensors."""
    rows: dict[str, list] = {k: [] for k in ("origin", "direction", "centre", "rgb", "alpha")}
    for i, (cam, centre) in enumerate(zip(views.cameras, centres, strict=True)):
        keep = np.nonzero(np.isfinite(centre))[0]
        rows["origin"].append(np.broadcast_to(cam.centre, (len(keep), 3)))
        rows["direction"].append(cam.directions()[keep])
        rows["centre"].append(centre[keep])
        rows["rgb"].append(views.images[i].reshape(-1, 3)[keep])
        alpha = views.alpha[i].reshape(-1)[keep] if views.alpha is not None else np.full(len(keep), np.nan)
        rows["alpha"].append(alpha)
    return {k: torch.from_numpy(np.concatenate(v).astype(np.float32)) for k, v in rows.items()}


def _loss(rgb, opacity, table, batch, weight: float, has_alpha: bool) -> Tensor:
    loss = ((rgb - table["rgb"][batch]) ** 2).mean()
    if has_alpha and weight > 0:
        bce = nn.functional.binary_cross_entropy(opacity.clamp(1e-4, 1 - 1e-4), table["alpha"][batch])
        loss = loss + weight * bce
    return loss


def _refine_codes(session, codes, net, optimiser, table, cfg, opt, has_alpha):
    """Joint steps on the codes and the colour network through the full ImFace forward."""
    from imface.session import FaceCodes

    torch_codes = session.torch_codes(codes)
    torch_codes.z_id = nn.Parameter(torch_codes.z_id.clone())
    params = [torch_codes.z_id]
    if not codes.neutral:  # a neutral face skips ExpNet: its z_exp does nothing
        torch_codes.z_exp = nn.Parameter(torch_codes.z_exp.clone())
        params.append(torch_codes.z_exp)
    code_optimiser = torch.optim.Adam(params, lr=opt.code_lr)
    background = torch.tensor(cfg.background, dtype=torch.float32)
    trained = list(net.parameters()) + params
    for step in range(1, opt.code_steps + 1):
        batch = torch.randint(0, len(table["centre"]), (opt.rays // 2,))
        with session.lock:
            prep = session.model.prepare(torch_codes)
            rgb, opacity, depth = render_rays(
                face_surface(session.model, prep, cfg.space), net, table["origin"][batch],
                table["direction"][batch], table["centre"][batch], cfg.refine_shell, background,
                jitter=True, with_depth=True,
            )  # fmt: skip
        loss = _loss(rgb, opacity, table, batch, opt.silhouette, has_alpha)
        # gradients of the trained tensors only (none for the frozen ImFace weights)
        for p, g in zip(trained, torch.autograd.grad(loss, trained), strict=True):
            p.grad = g
        optimiser.step()
        code_optimiser.step()
        moved = (opacity > 0.5).detach()  # shells follow the surface as the codes move it
        table["centre"][batch[moved]] = depth.detach()[moved]
        if step % 10 == 0 or step == opt.code_steps:
            yield Progress("Refining codes", step, opt.code_steps, values={"loss": float(loss.detach())})
    return FaceCodes.from_torch(torch_codes)


def _cache_shells(session, codes, table, cfg: FieldConfig, chunk: int = 4096):
    """SDF and colour coordinates of every (un-jittered) shell sample of every ray."""
    n, s = len(table["centre"]), cfg.shell.samples
    sdf = torch.empty(n, s)
    coords = torch.empty(n, s, 3)
    with session.lock, torch.no_grad():
        prep = session.model.prepare(session.torch_codes(codes))
        surface = face_surface(session.model, prep, cfg.space)
        for k, first in enumerate(range(0, n, chunk)):
            sl = slice(first, first + chunk)
            t = shell_distances(table["centre"][sl], cfg.shell)
            points = table["origin"][sl, None] + t[..., None] * table["direction"][sl, None]
            d, c = surface(points.reshape(-1, 3))
            sdf[sl], coords[sl] = d.reshape(-1, s), c.reshape(-1, s, 3)
            if k % 10 == 0:
                yield Progress("Caching shells", first, n)
    return sdf, coords


def _train_colour(net, optimiser, table, sdf, coords, cfg, opt, has_alpha):
    """Colour steps on the cached shells; returns (steps done, final loss)."""
    for group in optimiser.param_groups:
        group["lr"] = opt.lr
    decay = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda k: 0.1 ** (k / max(opt.steps, 1)))
    background = torch.tensor(cfg.background, dtype=torch.float32)
    s = cfg.shell.samples
    start, losses, step = time.perf_counter(), [], 0
    for step in range(1, opt.steps + 1):
        batch = torch.randint(0, len(table["centre"]), (opt.rays,))
        view = table["direction"][batch, None].expand(-1, s, 3).reshape(-1, 3)
        rgb = net(coords[batch].reshape(-1, 3), view).reshape(-1, s, 3)
        out, opacity, _ = composite(sdf[batch], rgb, cfg.shell.sharpness, background)
        loss = _loss(out, opacity, table, batch, 0.0, has_alpha)  # opacity is fixed here
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        decay.step()
        losses.append(float(loss.detach()))
        if step % 25 == 0 or step == opt.steps:
            yield Progress("Training colour", step, opt.steps, values={"mse": float(np.mean(losses[-25:]))})
        if opt.time_limit is not None and time.perf_counter() - start > opt.time_limit:
            break
    return step, float(np.mean(losses[-25:]))
