"""Points per second of the ImFace network: forward (inference) and forward + spatial gradient +
backward (the training cost), at the default and the paper size, on CPU and CUDA when present.

    python benchmarks/forward.py [--points N] [--scans S] [--repeats R]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from machine import describe as describe_machine

from imface.config import ModelConfig
from imface.model import Codes, ImFace, parameter_count, spatial_gradient


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeats):
    fn()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def measure(cfg: ModelConfig, device, scans: int, points: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = ImFace(cfg).to(device)
    codes = Codes(
        torch.randn(scans, cfg.id_dim, device=device) * 0.01,
        torch.randn(scans, cfg.exp_dim, device=device) * 0.01,
        torch.zeros(scans, dtype=torch.bool, device=device),
        torch.randn(scans, cfg.detail_dim, device=device) * 0.01 if cfg.detail else None,
    )
    index = torch.arange(scans, device=device).repeat_interleave(points // scans)
    x = torch.rand(index.numel(), 3, device=device) * 2 - 1

    def forward():
        with torch.no_grad():
            model(x, index, codes)

    def train_step():
        p = x.clone().requires_grad_(True)
        out = model(p, index, codes)
        grad = spatial_gradient(out.sdf, p, create_graph=True)
        (out.sdf.abs().mean() + (grad.norm(dim=-1) - 1).abs().mean()).backward()
        model.zero_grad(set_to_none=True)

    n = index.numel()
    return {
        "parameters": parameter_count(model),
        "forward_points_per_s": round(n / _timed(forward, device, repeats)),
        "train_points_per_s": round(n / _timed(train_step, device, repeats)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=16384)
    parser.add_argument("--scans", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    result = {
        "benchmark": "forward",
        "machine": describe_machine(),
        "points": args.points,
        "scans": args.scans,
    }
    for device in devices:
        points = args.points if device.type == "cpu" else args.points * 8
        name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
        result[device.type] = {"device": name}
        for label, cfg in (
            ("default", ModelConfig()),
            ("default_detail", ModelConfig(detail=True)),
            ("paper", ModelConfig.paper()),
        ):
            result[device.type][label] = measure(cfg, device, args.scans, points, args.repeats)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
