"""Where expression transfer loses: the model at the true codes, or the fitted expression code.

For every held-out pair the eval transfers (person A's expression onto person B), the model is
extracted at the codes of the registrations (B's identity, A's expression: what perfect fits
would give) and compared with B's true scan of that expression. Beside it, B's own expression at
B's own true codes (no transfer), and the linear face of both code pairs against B's
registration (vertex distance: how much the expression itself depends on the person). If the
true-code transfer is close to the own-codes figure, the model transfers and the eval's loss is
in the fitted expression code; if it is far, the model's expression residual carries A's
identity.

    python benchmarks/diagnose_transfer.py --corpus CACHE [--checkpoint C] [--people 003,005] [--out F]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diagnose_floors import basis_vertices_in, registration_codes
from machine import describe as describe_machine

from imface.evaluate import transfer_triples
from imface.extract import face_mesh
from imface.io import DEFAULT_CHECKPOINT, load_checkpoint
from imface.metrics import compare_meshes
from imface.model import Codes
from imface.samples.cache import Corpus


def chamfer_to_scan(model, codes: Codes, arrays, args) -> float:
    mesh = face_mesh(model, codes, args.resolution)
    gt = np.asarray(arrays["gt_vertices"]), np.asarray(arrays["gt_faces"])
    return compare_meshes(mesh.vertices, mesh.faces, *gt, args.points)["chamfer_mm"]


def rounded(row: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--points", type=int, default=50_000)
    parser.add_argument("--people", help="held-out people to pair, comma separated (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt, corpus = load_checkpoint(args.checkpoint), Corpus.open(args.corpus)
    if ckpt.basis is None:
        raise SystemExit("this diagnosis needs a model whose codes are tied to registrations")
    train_keys, test_keys = corpus.split_for(ckpt.codes.identity_labels)
    pick = basis_vertices_in(ckpt, corpus, train_keys)
    people = set(args.people.split(",")) if args.people else None
    records = {r["key"]: r for r in corpus.scans}
    keys = [k for k in test_keys if people is None or records[k]["identity"] in people]
    rows = []
    for key, _, _, truth in transfer_triples(records, keys):
        source_codes, _ = registration_codes(ckpt, corpus, key, pick)
        own_codes, linear_own = registration_codes(ckpt, corpus, truth, pick)
        moved = Codes(own_codes.z_id, source_codes.z_exp)
        arrays = corpus.load(truth)
        registered = np.asarray(arrays["registered_vertices"])[pick]
        linear_moved = ckpt.basis.face(moved.z_id[0], moved.z_exp[0]).numpy()
        linear_moved_mm = float(np.linalg.norm(linear_moved - registered, axis=1).mean()) * 100
        row = {
            "pair": f"{records[key]['identity']} -> {records[truth]['identity']}",
            "expression": records[key]["expression"],
            "own_codes_chamfer_mm": chamfer_to_scan(ckpt.model, own_codes, arrays, args),
            "transferred_codes_chamfer_mm": chamfer_to_scan(ckpt.model, moved, arrays, args),
            "linear_own_codes_mm": linear_own,
            "linear_transferred_codes_mm": linear_moved_mm,
        }
        rows.append(rounded(row))
        print(json.dumps(rows[-1]), flush=True)
    mean = {m: round(float(np.mean([r[m] for r in rows])), 3) for m in rows[0] if m.endswith("_mm")}
    summary = {
        "benchmark": "diagnose_transfer",
        "checkpoint": Path(args.checkpoint).name,
        "sha256": ckpt.sha256[:12],
        "machine": describe_machine(),
        "pairs": len(rows),
        "mean": mean,
        "rows": rows,
    }
    text = json.dumps(summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
