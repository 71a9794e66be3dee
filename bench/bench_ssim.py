"""SSIM loss (forward + backward) on the CPU: the fused kernel (recon.train.losses.ssim) against the
pure-PyTorch reference (losses.ssim_map: separable Gaussian windows as grouped convolutions + autograd),
measured in the same run.

    python bench/bench_ssim.py [--runs 15] [--threads 1 2]

Medians of --runs calls; one (1, H, W, 3) render against a fixed target, as a training step computes it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from recon.train import losses

SIZES = [(128, 128), (400, 400), (800, 600)]


def median_ms(fn, runs: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; medians of {args.runs} runs")
    print("| threads | size | fused fwd ms | fused fwd+bwd ms | reference fwd ms | reference fwd+bwd ms "
          "| speed-up fwd+bwd |")
    print("|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for w, h in SIZES:
            g = torch.Generator().manual_seed(0)
            a = torch.rand(1, h, w, 3, generator=g, requires_grad=True)
            b = torch.rand(1, h, w, 3, generator=g)
            fused_f = median_ms(lambda: losses.ssim(a.detach(), b), args.runs)
            fused_fb = median_ms(lambda: losses.ssim(a, b).backward(), args.runs)
            ref_f = median_ms(lambda: losses.ssim_map(a.detach(), b).mean(), args.runs)
            ref_fb = median_ms(lambda: losses.ssim_map(a, b).mean().backward(), args.runs)
            print(f"| {threads} | {w}x{h} | {fused_f:.2f} | {fused_fb:.2f} | {ref_f:.2f} | {ref_fb:.2f} | "
                  f"{ref_fb / fused_fb:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
