"""Where the accuracy goes: trained vs refitted codes, and warps vs the eval's correspondence path.

1. Training scans, fitted twice: with the codes training learned for them, and with codes fitted
   afresh by the eval's fit (from the mean code). If the trained codes are much better, the fit is
   the floor; if both are poor, the network is.
2. Correspondence on the same pairs of scans (A -> B, different people and expressions), three
   ways: through template space with the true vertices of both (the warps alone), with B's
   fitted mesh instead of B's true vertices (the eval's path: adds extraction and fitted codes),
   and the eval's figure itself. Scored on the surface both scans show.
3. Held-out scans (a model whose codes are tied to registrations): the codes of their own
   registrations (the bases' coordinates, what a perfect fit would find) against the fitted codes,
   and the linear face of those codes against the registration (the bases' own error). If the
   network at the true codes is far worse than at the fitted ones, it has not learned the
   surface between the training people's codes, and the fit hides that by moving the codes.

    python benchmarks/diagnose_floors.py --corpus CACHE [--checkpoint C] [--scans 4]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from machine import describe as describe_machine
from scipy.spatial import cKDTree

from imface.config import FitConfig
from imface.evaluate import Evaluator, _on_scan
from imface.extract import face_mesh
from imface.io import DEFAULT_CHECKPOINT, load_checkpoint
from imface.metrics import compare_meshes, correspondence_error_mm
from imface.model import Codes
from imface.samples.cache import Corpus


def trained_codes(ckpt, record) -> Codes | None:
    codes = ckpt.codes
    if record["identity"] not in codes.identity_labels:
        return None
    z_id = codes.z_id[codes.identity_labels.index(record["identity"])]
    z_exp = torch.zeros(ckpt.config.exp_dim)
    if not record["neutral"]:
        if record["key"] not in codes.expression_keys:
            return None
        z_exp = codes.z_exp[codes.expression_keys.index(record["key"])]
    return Codes(z_id[None], z_exp[None])


def basis_vertices_in(ckpt, corpus, train_keys) -> np.ndarray:
    """Indices of the registered vertices the checkpoint's bases live on (their mean face is the
    training people's mean neutral registration there)."""
    neutrals = [k for k in train_keys if corpus.record(k)["neutral"]]
    mean = np.mean([np.asarray(corpus.load(k)["registered_vertices"]) for k in neutrals], axis=0)
    return cKDTree(mean).query(ckpt.basis.mean.numpy())[1]


def registration_codes(ckpt, corpus, key, pick) -> tuple[Codes, float]:
    """The codes of a scan's own registration under the checkpoint's bases (on vertices `pick`)
    and the linear face's mean distance (mm) to that registration there."""
    basis = ckpt.basis
    record = corpus.record(key)
    own_neutral = next(s["key"] for s in corpus.scans if s["identity"] == record["identity"] and s["neutral"])
    neutral = np.asarray(corpus.load(own_neutral)["registered_vertices"])[pick]
    expressive = np.asarray(corpus.load(key)["registered_vertices"])[pick]
    z_id = basis.identity_codes(neutral[None])[0]
    z_exp = basis.expression_codes(expressive[None], neutral[None])[0]
    linear_mm = float(np.linalg.norm(basis.face(z_id, z_exp).numpy() - expressive, axis=1).mean() * 100)
    return Codes(z_id[None].float(), z_exp[None].float()), linear_mm


def template_points(model, codes: Codes, points) -> np.ndarray:
    with torch.no_grad():
        out = model.query(torch.as_tensor(np.asarray(points, dtype=np.float32)), model.prepare(codes))
    return out.template.numpy()


def warp_correspondence(model, codes_a, codes_b, arrays_a, arrays_b, target_b=None) -> float:
    """A's true vertices -> template; nearest template point of B's vertices (true, or a fitted
    mesh given as target_b); error against B's true vertex, on the surface both scans show."""
    true_a = np.asarray(arrays_a["registered_vertices"], dtype=np.float32)
    true_b = np.asarray(arrays_b["registered_vertices"], dtype=np.float32)
    visible = _on_scan(true_a, arrays_a) & _on_scan(true_b, arrays_b)
    surface_b = true_b if target_b is None else target_b
    _, nearest = cKDTree(template_points(model, codes_b, surface_b)).query(
        template_points(model, codes_a, true_a)
    )
    return correspondence_error_mm(surface_b[nearest][visible], true_b[visible])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--scans", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ckpt, corpus = load_checkpoint(args.checkpoint), Corpus.open(args.corpus)
    train_keys, test_keys = corpus.split_for(ckpt.codes.identity_labels)
    rng = np.random.default_rng(0)
    chosen_train = [train_keys[i] for i in rng.choice(len(train_keys), args.scans, replace=False)]
    chosen_test = [test_keys[i] for i in rng.choice(len(test_keys), args.scans, replace=False)]
    ev = Evaluator(
        ckpt,
        corpus,
        chosen_test + chosen_train,
        train_keys,
        FitConfig(iterations=args.iterations, points_per_step=4096),
        args.resolution,
        50_000,
    )
    rows = []
    for key in chosen_train:
        arrays = corpus.load(key)
        gt = np.asarray(arrays["gt_vertices"]), np.asarray(arrays["gt_faces"])
        mesh = face_mesh(ckpt.model, trained_codes(ckpt, corpus.record(key)), args.resolution)
        trained = compare_meshes(mesh.vertices, mesh.faces, *gt, 50_000)
        refit = ev.fit_scan(key)["imface"]
        rows.append(
            {
                "scan": key,
                "trained_chamfer_mm": round(trained["chamfer_mm"], 3),
                "refit_chamfer_mm": round(refit["chamfer_mm"], 3),
                "trained_f1": round(trained["fscore_1mm"], 1),
                "refit_f1": round(refit["fscore_1mm"], 1),
            }
        )
    held_out = []
    pick = basis_vertices_in(ckpt, corpus, train_keys) if ckpt.basis is not None else None
    for key in chosen_test if pick is not None else []:
        arrays = corpus.load(key)
        gt = np.asarray(arrays["gt_vertices"]), np.asarray(arrays["gt_faces"])
        codes, linear_mm = registration_codes(ckpt, corpus, key, pick)
        mesh = face_mesh(ckpt.model, codes, args.resolution)
        true_codes = compare_meshes(mesh.vertices, mesh.faces, *gt, 50_000)
        fit = ev.fit_scan(key)
        fitted = torch.cat([fit["codes"].z_id[0], fit["codes"].z_exp[0]])
        truth = torch.cat([codes.z_id[0], codes.z_exp[0]])
        apart = float((fitted - truth).norm() / truth.norm())
        held_out.append(
            {
                "scan": key,
                "registration_codes_chamfer_mm": round(true_codes["chamfer_mm"], 3),
                "fitted_codes_chamfer_mm": round(fit["imface"]["chamfer_mm"], 3),
                "pca_fitted_chamfer_mm": round(fit["pca"]["chamfer_mm"], 3),
                "linear_face_of_registration_codes_mm": round(linear_mm, 3),
                "fitted_vs_registration_codes_relative": round(apart, 3),
            }
        )
    pairs = []
    for split, keys in (("train", chosen_train), ("held_out", chosen_test)):
        for key in keys:
            if key not in ev.fits:
                ev.fit_scan(key)
        for a, b in zip(keys, keys[1:] + keys[:1], strict=True):
            fa, fb = ev.fits[a], ev.fits[b]
            arrays_a, arrays_b = corpus.load(a), corpus.load(b)
            entry = {
                "split": split,
                "pair": f"{a} -> {b}",
                "warps_fitted_codes_true_surfaces_mm": round(
                    warp_correspondence(ckpt.model, fa["codes"], fb["codes"], arrays_a, arrays_b), 3
                ),
                "warps_fitted_codes_fitted_mesh_mm": round(
                    warp_correspondence(
                        ckpt.model, fa["codes"], fb["codes"], arrays_a, arrays_b, fb["mesh"].vertices
                    ),
                    3,
                ),
                "eval_mm": round(ev.correspondence(a, b)["imface"], 3),
            }
            ca, cb = trained_codes(ckpt, corpus.record(a)), trained_codes(ckpt, corpus.record(b))
            if ca is not None and cb is not None:
                entry["warps_trained_codes_true_surfaces_mm"] = round(
                    warp_correspondence(ckpt.model, ca, cb, arrays_a, arrays_b), 3
                )
            pairs.append(entry)
    result = {
        "benchmark": "diagnose_floors",
        "checkpoint": Path(args.checkpoint).name,
        "sha256": ckpt.sha256[:12],
        "machine": describe_machine(),
        "codes": rows,
        "held_out_codes": held_out,
        "correspondence": pairs,
    }
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
