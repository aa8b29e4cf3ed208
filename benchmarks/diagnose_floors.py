"""Where the accuracy goes: trained vs refitted codes, and warps vs the eval's correspondence path.

1. Training scans, fitted twice: with the codes training learned for them, and with codes fitted
   afresh by the eval's fit (from the mean code). If the trained codes are much better, the fit is
   the floor; if both are poor, the network is.
2. Correspondence on the same pairs of scans (A -> B, different people and expressions), three
   ways: through template space with the true vertices of both (the warps alone), with B's
   fitted mesh instead of B's true vertices (the eval's path: adds extraction and fitted codes),
   and the eval's figure itself. Scored on the surface both scans show.

    python benchmarks/diagnose_floors.py --corpus CACHE [--checkpoint C] [--scans 4]
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import torch
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
    print(
        json.dumps(
            {
                "benchmark": "diagnose_floors",
                "checkpoint": str(args.checkpoint),
                "sha256": ckpt.sha256[:12],
                "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
                "codes": rows,
                "correspondence": pairs,
            }
        )
    )


if __name__ == "__main__":
    main()
