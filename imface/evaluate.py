"""The evaluation protocol (``python -m imface eval ... --json OUT``: imface/commands.py).

The metrics of EVALUATION.md on held-out identities, ImFace against a linear PCA 3DMM of the same
total latent size built from the same training scans: Chamfer (mm), F@1mm, F@2.5mm, normal
consistency, per expression and overall; correspondence error through template space; expression
transfer error. ``markdown`` makes the table the command prints and writes beside its JSON.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch

from imface.baseline import PCAModel, corpus_region
from imface.config import FitConfig
from imface.errors import UserError
from imface.fit.codes import fit_codes
from imface.fit.refine import refine_to_scan
from imface.fit.scan import prior_std, starting_codes
from imface.generate import transfer_codes
from imface.jobs import Job, Progress, drive
from imface.metrics import (
    LANDMARK_REGIONS,
    compare_meshes,
    correspondence_error_by_region,
    correspondence_error_mm,
    face_regions,
)
from imface.model import Codes

METRICS = ("chamfer_mm", "fscore_1mm", "fscore_2.5mm", "normal_consistency")


def _tensors(arrays, keys=("surface_points", "surface_normals", "space_points", "space_sdf")):
    # copy: cached arrays are read-only memory maps, which torch will not wrap silently
    return {k: torch.tensor(np.asarray(arrays[k], dtype=np.float32)) for k in keys}


def pca_baseline(corpus, train_keys: list[str], components: int) -> PCAModel:
    """The linear 3DMM of the training people's registrations, over the region scans keep."""
    meshes = np.stack([np.asarray(corpus.load(k)["registered_vertices"]) for k in train_keys])
    faces = corpus.registered_faces
    if faces is None:
        raise UserError(f"{corpus.root}: no registered topology; the PCA baseline needs a synthetic corpus")
    return PCAModel.build(meshes, faces, components, corpus_region(corpus, train_keys, list(meshes)))


class Evaluator:
    def __init__(
        self, checkpoint, corpus, test_keys, train_keys, fit_config: FitConfig, resolution: int, points: int
    ):
        self.ckpt, self.corpus = checkpoint, corpus
        self.test_keys, self.train_keys = test_keys, train_keys
        self.fit_config, self.resolution, self.points = fit_config, resolution, points
        self.records = {r["key"]: r for r in corpus.scans}
        self.pca = pca_baseline(corpus, train_keys, checkpoint.config.id_dim + checkpoint.config.exp_dim)
        self.fits: dict[str, dict] = {}

    # -- per scan --------------------------------------------------------------------------
    def fit_scan(self, key: str) -> dict:
        from imface.extract import face_mesh

        arrays = self.corpus.load(key)
        samples = _tensors(arrays)
        init_id, init_exp = starting_codes(self.ckpt, samples["surface_points"], self.fit_config)
        fit = self._fit(samples, init_id, init_exp)
        mesh = face_mesh(self.ckpt.model, fit.codes, self.resolution)
        coefficients = self.pca.fit(np.asarray(arrays["surface_points"]))
        pca_vertices = self.pca.vertices(torch.from_numpy(coefficients)).detach().numpy()
        result = {
            "codes": fit.codes,
            "mesh": mesh,
            "pca_coefficients": coefficients,
            "pca_vertices": pca_vertices,
            "fit_seconds": fit.seconds,
        }
        gt_v, gt_f = np.asarray(arrays["gt_vertices"]), np.asarray(arrays["gt_faces"])
        result["imface"] = compare_meshes(mesh.vertices, mesh.faces, gt_v, gt_f, self.points)
        result["pca"] = compare_meshes(pca_vertices, self.pca.faces, gt_v, gt_f, self.points)
        # the whole fit pipeline: the same person-specific detail stage after either model
        scan_points = np.asarray(arrays["surface_points"])
        scan_normals = np.asarray(arrays["surface_normals"])
        for name, v, f in (("imface", mesh.vertices, mesh.faces), ("pca", pca_vertices, self.pca.faces)):
            detailed = refine_to_scan(v, f, scan_points, scan_normals).apply(v)
            result[f"{name}_detail"] = compare_meshes(detailed, f, gt_v, gt_f, self.points)
        self.fits[key] = result
        return result

    # -- pairs -----------------------------------------------------------------------------
    def correspondence(self, key_a: str, key_b: str) -> dict[str, float]:
        """Map A's true vertices to B through template space (ImFace) or through the PCA's vertex
        indices; error against B's true vertex of the same index. Scored on the surface both
        scans show (registered vertices within 1 mm of both cropped scans: no sides beyond the
        crop, no cavities), and beside it on every vertex inside the 100 mm sphere."""
        arrays_a, arrays_b = self.corpus.load(key_a), self.corpus.load(key_b)
        true_a = np.asarray(arrays_a["registered_vertices"], dtype=np.float32)
        true_b = np.asarray(arrays_b["registered_vertices"], dtype=np.float32)
        sphere = (np.linalg.norm(true_a, axis=1) < 1.0) & (np.linalg.norm(true_b, axis=1) < 1.0)
        visible = sphere & _on_scan(true_a, arrays_a) & _on_scan(true_b, arrays_b)
        fa, fb = self.fits[key_a], self.fits[key_b]
        template_a = self._template(fa["codes"], true_a)
        template_b = self._template(fb["codes"], fb["mesh"].vertices)
        from scipy.spatial import cKDTree

        # where each method sends every vertex of A on B's fitted surface
        imface_b = fb["mesh"].vertices[cKDTree(template_b).query(template_a)[1]]
        pca_b = fb["pca_vertices"][cKDTree(fa["pca_vertices"]).query(true_a)[1]]
        raw_b = fb["mesh"].vertices[cKDTree(fb["mesh"].vertices).query(true_a)[1]]  # no model
        regions = face_regions(true_b[visible], np.asarray(arrays_b["landmarks68"]))
        imface = correspondence_error_by_region(imface_b[visible], true_b[visible], regions)
        pca = correspondence_error_by_region(pca_b[visible], true_b[visible], regions)
        result = {
            "imface": imface["all"],
            "pca": pca["all"],
            "nearest_point": correspondence_error_mm(raw_b[visible], true_b[visible]),
            "vertices": float(visible.sum()),
            "imface_sphere": correspondence_error_mm(imface_b[sphere], true_b[sphere]),
            "pca_sphere": correspondence_error_mm(pca_b[sphere], true_b[sphere]),
            "nearest_point_sphere": correspondence_error_mm(raw_b[sphere], true_b[sphere]),
            "vertices_sphere": float(sphere.sum()),
        }
        for name, errors in (("imface", imface), ("pca", pca)):
            result.update({f"{name}/{r}": e for r, e in errors.items()})
        return result

    def _template(self, codes: Codes, points: np.ndarray) -> np.ndarray:
        model = self.ckpt.model
        prep = model.prepare(codes)
        with torch.no_grad():
            out = model.query(torch.from_numpy(np.asarray(points, dtype=np.float32)), prep)
        return out.template.numpy()

    def _fit(self, samples, init_id, init_exp, fixed_identity=None):
        return fit_codes(
            self.ckpt.model,
            samples,
            self.fit_config,
            init_id=init_id,
            init_exp=init_exp,
            prior_std=prior_std(self.ckpt),
            fixed_identity=fixed_identity,
        )

    def transfer(self, key_expr: str, key_neutral_src: str, key_neutral_dst: str, key_truth: str) -> dict:
        """Expression of identity A onto identity B, against B's true scan with that expression.
        ImFace pairs the expression code fitted to A's scan with the identity code fitted to B's
        neutral scan (what `rig --expression-from` does with two fitted faces); the PCA adds
        A's expression offset (expression fit minus A's neutral fit) to B's neutral fit. Beside
        it, ImFace with A's expression code refitted while A's identity is held at its neutral
        fit (a harder protocol: that code must also absorb what the neutral fit got wrong), and
        ImFace with the PCA's own protocol in code space: B's neutral codes plus A's expression
        codes minus A's neutral codes (both codes move, as both halves of the PCA's offset do)."""
        from imface.extract import face_mesh

        src, dst = self.fits[key_expr], self.fits[key_neutral_dst]
        src_neutral = self.fits[key_neutral_src]["codes"]
        z_id_src = src_neutral.z_id[0]
        samples = _tensors(self.corpus.load(key_expr))
        held = self._fit(samples, z_id_src, src["codes"].z_exp[0], fixed_identity=z_id_src).codes.z_exp
        truth = self.corpus.load(key_truth)
        gt_v, gt_f = np.asarray(truth["gt_vertices"]), np.asarray(truth["gt_faces"])
        delta = src["pca_vertices"] - self.fits[key_neutral_src]["pca_vertices"]
        pca_vertices = dst["pca_vertices"] + delta  # linear model: add the expression offset

        def imface_chamfer(codes: Codes) -> float:
            mesh = face_mesh(self.ckpt.model, codes, self.resolution)
            return compare_meshes(mesh.vertices, mesh.faces, gt_v, gt_f, self.points)["chamfer_mm"]

        return {
            "imface": imface_chamfer(transfer_codes(dst["codes"], src["codes"])),
            "imface_identity_held": imface_chamfer(Codes(dst["codes"].z_id, held)),
            "imface_code_offset": imface_chamfer(transfer_codes(dst["codes"], src["codes"], src_neutral)),
            "pca": compare_meshes(pca_vertices, self.pca.faces, gt_v, gt_f, self.points)["chamfer_mm"],
        }


def _on_scan(vertices: np.ndarray, arrays, tolerance: float = 0.01) -> np.ndarray:
    """(V,) bool: registered vertices within `tolerance` (model units) of the cropped scan."""
    from scipy.spatial import cKDTree

    return cKDTree(np.asarray(arrays["gt_vertices"])).query(vertices)[0] < tolerance


def _mean_table(rows: list[dict]) -> dict[str, float]:
    return {m: float(np.mean([r[m] for r in rows])) for m in METRICS}


def evaluate(
    checkpoint, corpus, test_keys, train_keys, fit_config, resolution=128, points=150_000, log=print
):
    """The eval summary; `log` gets one line per fitted scan."""
    job = evaluate_job(checkpoint, corpus, test_keys, train_keys, fit_config, resolution, points)
    return drive(job, lambda p: log(p.message) if p.stage == FITTING and p.message else None)


FITTING = "Fitting held-out scans"


def evaluate_job(
    checkpoint, corpus, test_keys, train_keys, fit_config, resolution=128, points=150_000
) -> Job[dict]:
    """ImFace and PCA fitted to every scan, then correspondence and expression transfer over
    pairs; one Progress record per scan and per pair (the scan's figures in its message)."""
    yield Progress(FITTING, 0, len(test_keys), "building the PCA baseline")
    ev = Evaluator(checkpoint, corpus, test_keys, train_keys, fit_config, resolution, points)
    per_expression: dict[str, dict[str, list]] = defaultdict(lambda: {"imface": [], "pca": []})
    with_detail: dict[str, list] = {"imface": [], "pca": []}
    per_population: dict[str, dict[str, list]] = defaultdict(lambda: {"imface": [], "pca": []})
    started = time.perf_counter()
    for i, key in enumerate(test_keys):
        result = ev.fit_scan(key)
        expression = ev.records[key]["expression"]
        per_expression[expression]["imface"].append(result["imface"])
        per_expression[expression]["pca"].append(result["pca"])
        population = ev.records[key].get("population", "unrecorded")
        per_population[population]["imface"].append(result["imface"])
        per_population[population]["pca"].append(result["pca"])
        for model in with_detail:
            with_detail[model].append(result[f"{model}_detail"])
        yield Progress(
            FITTING,
            i + 1,
            len(test_keys),
            f"[{i + 1}/{len(test_keys)}] {key}: ImFace {result['imface']['chamfer_mm']:.3f} mm, "
            f"PCA {result['pca']['chamfer_mm']:.3f} mm",
        )
    summary = {
        "scans": len(test_keys),
        "keys": list(test_keys),
        "seconds": round(time.perf_counter() - started, 1),
        "overall": {
            model: _mean_table([r for e in per_expression.values() for r in e[model]])
            for model in ("imface", "pca")
        },
        "overall_with_detail": {model: _mean_table(rows) for model, rows in with_detail.items()},
        "per_expression": {
            e: {model: _mean_table(v[model]) for model in ("imface", "pca")}
            for e, v in sorted(per_expression.items())
        },
        "per_population": {
            p: {model: _mean_table(v[model]) for model in ("imface", "pca")} | {"scans": len(v["imface"])}
            for p, v in sorted(per_population.items())
        },
    }
    summary["correspondence_mm"] = yield from _pairs_mean(ev, test_keys)
    summary["transfer_chamfer_mm"] = yield from _transfer_mean(ev, test_keys)
    return summary


def _pairs_mean(ev: Evaluator, keys) -> Job[dict[str, float]]:
    """Correspondence over pairs across identities and expressions: each scan with the scan of
    the next identity."""
    by_identity = defaultdict(list)
    for key in keys:
        by_identity[ev.records[key]["identity"]].append(key)
    identities = sorted(by_identity)
    if len(identities) < 2:
        return {}
    pairs = []
    for n, ident in enumerate(identities):
        other = by_identity[identities[(n + 1) % len(identities)]]
        pairs += [(key, other[j % len(other)]) for j, key in enumerate(by_identity[ident])]
    results = []
    for j, (key_a, key_b) in enumerate(pairs):
        results.append(ev.correspondence(key_a, key_b))
        yield Progress("Scoring correspondence", j + 1, len(pairs), key_a)
    return {m: float(np.mean([r[m] for r in results])) for m in results[0]}


def transfer_triples(records: dict[str, dict], keys) -> list[tuple[str, str, str, str]]:
    """(A's expressive scan, A's neutral, B's neutral, B's scan of that expression) for each
    person A and the next person B in sorted order, over every expression both have."""
    table = {(records[k]["identity"], records[k]["expression"]): k for k in keys}
    neutral = {ident: k for (ident, _), k in table.items() if records[k]["neutral"]}
    identities = sorted(neutral)
    triples = []
    for n, src in enumerate(identities):
        dst = identities[(n + 1) % len(identities)]
        if dst == src:
            continue
        for (ident, expression), key in table.items():
            truth = table.get((dst, expression))
            if ident == src and truth and not records[key]["neutral"]:
                triples.append((key, neutral[src], neutral[dst], truth))
    return triples


def _transfer_mean(ev: Evaluator, keys) -> Job[dict[str, float]]:
    triples = transfer_triples(ev.records, keys)
    results = []
    for j, triple in enumerate(triples):
        results.append(ev.transfer(*triple))
        yield Progress("Transferring expressions", j + 1, len(triples), triple[0])
    if not results:
        return {}
    return {m: float(np.mean([r[m] for r in results])) for m in results[0]}


def markdown(summary: dict) -> str:
    lines = [
        "| expression | ImFace Chamfer (mm) | PCA Chamfer (mm) | ImFace F@1mm | PCA F@1mm "
        "| ImFace F@2.5mm | PCA F@2.5mm | ImFace normals | PCA normals |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name, entry):
        i, p = entry["imface"], entry["pca"]
        return (
            f"| {name} | {i['chamfer_mm']:.3f} | {p['chamfer_mm']:.3f} | {i['fscore_1mm']:.1f} | "
            f"{p['fscore_1mm']:.1f} | {i['fscore_2.5mm']:.1f} | {p['fscore_2.5mm']:.1f} | "
            f"{i['normal_consistency']:.3f} | {p['normal_consistency']:.3f} |"
        )

    for expression, entry in summary["per_expression"].items():
        lines.append(row(expression, entry))
    lines.append(row("**overall**", summary["overall"]))
    for population, entry in summary.get("per_population", {}).items():
        if len(summary["per_population"]) > 1:
            lines.append(row(f"*{population} people* ({entry['scans']} scans)", entry))
    extra = []
    if summary.get("overall_with_detail"):
        i, p = summary["overall_with_detail"]["imface"], summary["overall_with_detail"]["pca"]
        extra.append(
            f"With the fit's detail stage after either model (the whole `fit` pipeline): Chamfer "
            f"ImFace {i['chamfer_mm']:.3f} mm, PCA {p['chamfer_mm']:.3f} mm; F@1mm ImFace "
            f"{i['fscore_1mm']:.1f} %, PCA {p['fscore_1mm']:.1f} %."
        )
    if summary.get("correspondence_mm"):
        c = summary["correspondence_mm"]
        extra.append(
            f"Correspondence error on the surface the scans show ({c.get('vertices', 0):.0f} vertices a "
            f"pair on average): ImFace {c['imface']:.2f} mm, PCA {c['pca']:.2f} mm (nearest point "
            f"without a model: {c.get('nearest_point', float('nan')):.2f} mm)."
        )
        if "imface_sphere" in c:
            extra.append(
                f"On every vertex inside the 100 mm sphere ({c['vertices_sphere']:.0f} vertices, "
                f"including sides and cavities no scan shows): ImFace {c['imface_sphere']:.2f} mm, "
                f"PCA {c['pca_sphere']:.2f} mm, nearest point {c['nearest_point_sphere']:.2f} mm."
            )
        regions = [r for r in LANDMARK_REGIONS if f"imface/{r}" in c]
        if regions:
            extra += [
                "",
                "| correspondence (mm) | " + " | ".join(regions) + " |",
                "|---|" + "---|" * len(regions),
            ]
            for model, name in (("imface", "ImFace"), ("pca", "PCA")):
                extra.append(f"| {name} | " + " | ".join(f"{c[f'{model}/{r}']:.2f}" for r in regions) + " |")
            extra.append("")
    if summary.get("transfer_chamfer_mm"):
        t = summary["transfer_chamfer_mm"]
        also = ""
        if "imface_identity_held" in t:
            also = (
                f" (A's expression code refitted with A's identity held: {t['imface_identity_held']:.3f} mm)"
            )
        if "imface_code_offset" in t:
            also += f"; B's codes plus A's code offset (the PCA's protocol): {t['imface_code_offset']:.3f} mm"
        line = f"Expression transfer Chamfer: ImFace {t['imface']:.3f} mm{also}, PCA {t['pca']:.3f} mm."
        extra.append(line)
    return "\n".join(lines + [""] + extra) + "\n"
