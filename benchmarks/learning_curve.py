"""Training-set learning curve of a run folder: loss terms as mean L1 in mm against training minutes.

    python benchmarks/learning_curve.py RUN [--every 5] [--out RESULT.json]

Reads RUN/log.jsonl (one record every log_every steps) and RUN/config.json (the loss weights),
divides the weights out and converts model units to mm, and averages the records of each window
of `--every` training minutes (the per-step wall times summed, so a resumed run continues the
clock). Held-out figures come from `python -m imface eval` on snapshots; this is the cheap half.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from machine import describe as describe_machine

from imface.units import MM_PER_UNIT

# loss term -> (curve name, scale from the weighted loss to the reported figure)
TERMS = {
    "sdf": "sdf_l1_mm",
    "normal": "normal_1_minus_cos",
    "correction": "correction_l1_mm",
    "correspondence_expression": "correspondence_expression_l1_mm",
    "correspondence_template": "correspondence_template_l1_mm",
}


def curve(records: list[dict], weights: dict, every_minutes: float) -> list[dict]:
    rows, window, minutes, previous_step = [], [], 0.0, 0
    for record in records:
        minutes += record["seconds"] * (record["step"] - previous_step) / 60.0
        previous_step = record["step"]
        window.append(record)
        if minutes >= (len(rows) + 1) * every_minutes:
            rows.append(_row(window, weights, minutes))
            window = []
    if window:
        rows.append(_row(window, weights, minutes))
    return rows


def _row(window: list[dict], weights: dict, minutes: float) -> dict:
    row = {"train_minutes": round(minutes, 1), "step": window[-1]["step"]}
    for term, name in TERMS.items():
        values = [r[term] for r in window if term in r]
        if values and weights.get(term):
            mean = sum(values) / len(values) / weights[term]
            row[name] = round(mean if name.endswith("cos") else mean * MM_PER_UNIT, 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run")
    parser.add_argument("--every", type=float, default=5.0, help="window in training minutes")
    parser.add_argument("--out")
    args = parser.parse_args()
    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    weights = config.get("train", config).get("losses", {})
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    result = {
        "benchmark": "learning_curve_training_losses",
        "machine": describe_machine(),
        "steps": records[-1]["step"] if records else 0,
        "curve": curve(records, weights, args.every),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
