"""Benchmark of the CPU splatting kernels (recon.render.rasterize) against a PyTorch baseline.

    python bench/bench_rasterize.py                       # all four sizes, 5 runs each
    python bench/bench_rasterize.py --configs 5k,100k --runs 7 --baseline-gb 3

Baseline: gsplat's PyTorch projection (gsplat.cuda._torch_impl) plus a tiled PyTorch compositor
(per 16x16 tile, the overlapping splats in depth order, dense alpha/transmittance with autograd).
It runs in the same invocation when its estimated autograd memory fits under --baseline-gb.

Each (size, implementation) runs in its own subprocess so that peak memory can be read from the
process's maximum RSS: "extra MB" is that peak minus the RSS after the scene was built and the
kernels were loaded. When the baseline runs, ours runs once before it and once after, and its
medians are over both bursts (a few milliseconds per run would otherwise sample a noisy machine at
one moment). Times are wall-clock medians (forward = rasterize(), backward = autograd from
fixed output gradients like an L1 loss's, so no loss is timed) at torch's
thread count; "CPU ms" is the process CPU time of one
forward+backward (all threads), which a machine shared with other jobs inflates far less than wall time;
"best" is the fastest single forward+backward, the closest to an idle machine. "pairs" are the pixel-splat pairs the
kernels evaluate (8-pixel half-rows surviving the per-row culling, x8); "isects" are our tile
listings (a splat is listed only where it can reach alpha 1/255); gsplat's bounding-box lists would
give box_isects x 256. The scene: Gaussians uniformly in a unit ball seen from distance 3, log-normal
scales around 0.6 / N^(1/3), opacities in [0.1, 0.9].
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "5k": (5_000, 128, 128),
    "50k": (50_000, 256, 256),
    "100k": (100_000, 400, 400),
    "300k": (300_000, 800, 600),
}
BASELINE_BYTES_PER_PAIR = 64  # autograd keeps ~16 float tensors of tile_pixels x tile_splats


def scene(n, width, height, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    means = d / d.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=g) ** (1 / 3)
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.4) * (0.6 / n ** (1 / 3))
    opacities = torch.rand(n, generator=g) * 0.8 + 0.1
    colors = torch.rand(n, 3, generator=g)
    eye = torch.tensor([0.0, 0.4, -3.0])
    forward = -eye / eye.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, -1.0, 0.0]))
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    R = torch.stack([right, down, forward])
    viewmat = torch.eye(4)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = -R @ eye
    f = 1.1 * max(width, height)
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    target = torch.rand(1, height, width, 3, generator=g)
    return [means, quats, scales, opacities, colors], viewmat[None], K[None], target


def baseline_render(means, quats, scales, opacities, colors, viewmats, Ks, width, height):
    """gsplat's PyTorch projection + a tiled dense PyTorch compositor with gsplat's rules."""
    import torch
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(means, covars, viewmats, Ks, width, height)
    tile = 16
    tiles_x, tiles_y = math.ceil(width / tile), math.ceil(height / tile)
    images, alphas = [], []
    for c in range(viewmats.shape[0]):
        visible = torch.nonzero((radii[c] > 0).all(dim=-1)).squeeze(1)
        order = visible[torch.sort(depths[c, visible].detach(), stable=True).indices]
        m2, con, op, col = means2d[c, order], conics[c, order], opacities[order], colors[order]
        with torch.no_grad():
            t = m2.detach() / tile
            r = radii[c, order].float() / tile
            x0 = torch.floor(t[:, 0] - r[:, 0]).clamp(0, tiles_x)
            y0 = torch.floor(t[:, 1] - r[:, 1]).clamp(0, tiles_y)
            x1 = torch.ceil(t[:, 0] + r[:, 0]).clamp(0, tiles_x)
            y1 = torch.ceil(t[:, 1] + r[:, 1]).clamp(0, tiles_y)
        rows_rgb, rows_alpha = [], []
        for ty in range(tiles_y):
            row_rgb, row_alpha = [], []
            in_row = (y0 <= ty) & (ty < y1)
            h = min(tile, height - ty * tile)
            for tx in range(tiles_x):
                w = min(tile, width - tx * tile)
                ids = torch.nonzero(in_row & (x0 <= tx) & (tx < x1)).squeeze(1)
                ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
                pix = torch.stack([xs + tx * tile, ys + ty * tile], dim=-1).reshape(-1, 2).float() + 0.5
                d = m2[ids][None] - pix[:, None]
                cc = con[ids]
                sigma = 0.5 * (cc[:, 0] * d[..., 0] ** 2 + cc[:, 2] * d[..., 1] ** 2) + cc[:, 1] * d[..., 0] * d[..., 1]
                alpha = torch.clamp_max(op[ids] * torch.exp(-sigma), 0.999)
                with torch.no_grad():
                    ok = (sigma >= 0) & (alpha >= 1.0 / 255.0)
                alpha = torch.where(ok, alpha, torch.zeros(()))
                with torch.no_grad():
                    keep = torch.cumprod(1.0 - alpha, dim=1) > 1e-4
                alpha = torch.where(keep, alpha, torch.zeros(()))
                trans = torch.cumprod(1.0 - alpha, dim=1)
                t_before = torch.cat([torch.ones_like(trans[:, :1]), trans[:, :-1]], dim=1)
                weights = alpha * t_before
                t_final = trans[:, -1] if len(ids) else torch.ones(len(pix))
                row_rgb.append((weights @ col[ids]).reshape(h, w, 3))
                row_alpha.append((1.0 - t_final).reshape(h, w, 1))
            rows_rgb.append(torch.cat(row_rgb, dim=1))
            rows_alpha.append(torch.cat(row_alpha, dim=1))
        images.append(torch.cat(rows_rgb, dim=0))
        alphas.append(torch.cat(rows_alpha, dim=0))
    return torch.stack(images), torch.stack(alphas)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(impl: str, config: str, runs: int) -> dict:
    import torch

    n, width, height = CONFIGS[config]
    params, viewmats, Ks, target = scene(n, width, height)
    params = [p.requires_grad_(True) for p in params]
    if impl == "ours":
        from recon.kernels import load
        from recon.render import rasterize

        load()

        def render():
            return rasterize(*params, viewmats, Ks, width, height)[:2]
    else:
        def render():
            return baseline_render(*params, viewmats, Ks, width, height)

    # fixed output gradients shaped like an L1 loss's (+-1/numel) plus 0.1 x mean alpha's, so that
    # "backward" is the renderer's own (an L1 loss's forward and backward took 0.4-0.8 ms at 128x128)
    g = torch.Generator().manual_seed(1)
    grad_colors = (torch.randint(0, 2, target.shape, generator=g) * 2 - 1).float() / target.numel()
    grad_alphas = torch.full((1, height, width, 1), 0.1 / (height * width))
    # its first call imports torch's symbolic-shape helpers (~35 MB): not the renderer's memory
    probe = torch.zeros(1, requires_grad=True)
    torch.autograd.backward([probe * 2], [torch.ones(1)])
    start_rss = rss_mb()
    fwd, bwd, cpu = [], [], []
    warmup = 1 if impl == "ours" else 0
    image = None
    for i in range(runs + warmup):
        c0 = time.process_time()
        t0 = time.perf_counter()
        colors, alphas = render()
        t1 = time.perf_counter()
        torch.autograd.backward([colors, alphas], [grad_colors, grad_alphas])
        t2 = time.perf_counter()
        c1 = time.process_time()
        for p in params:
            p.grad = None
        if i >= warmup:
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
            cpu.append((c1 - c0) * 1e3)
        image = colors.detach()
        del colors, alphas
    out = {
        "fwd_ms": statistics.median(fwd), "bwd_ms": statistics.median(bwd), "cpu_ms": statistics.median(cpu),
        "fwd_all": fwd, "bwd_all": bwd, "cpu_all": cpu, "extra_mb": peak_rss_mb() - start_rss,
        "threads": torch.get_num_threads(), "image_sum": float(image.sum()),
    }
    if impl == "ours":
        out.update(count_pairs(params, viewmats, Ks, width, height))
    return out


def count_pairs(params, viewmats, Ks, width, height) -> dict:
    """Evaluated pairs and tile intersections of one forward, through the operators directly."""
    import torch
    from recon.kernels import load

    ops = load()
    means, quats, scales, opacities, colors = [p.detach() for p in params]
    campos = torch.inverse(viewmats)[:, :3, 3].contiguous()
    radii, means2d, depths, conics, _ = ops.project_forward(
        means, quats, scales, opacities, viewmats, Ks, campos, torch.zeros(0), torch.zeros(0), -1, width, height,
        0.3, 0.01, 1e10, 0.0)
    n = means.shape[0]
    out = ops.rasterize_forward(means2d, conics, colors[None].contiguous(), opacities[None].contiguous(), radii,
                                depths, torch.zeros(n, dtype=torch.int32), torch.zeros(0), 1, width, height)
    records, tile_lists, tile_cells = out[4], out[6], out[10]
    pairs = ops.count_pairs(tile_cells)
    # the bounding-box tiles (gsplat's lists, and the baseline's): what the baseline's memory scales with
    tile = 16
    visible = (radii[0] > 0).all(dim=-1)
    t, r = means2d[0, visible] / tile, radii[0, visible].to(means2d.dtype) / tile
    span = [(torch.ceil(t[:, k] + r[:, k]).clamp(0, lim) - torch.floor(t[:, k] - r[:, k]).clamp(0, lim)).clamp(min=0)
            for k, lim in ((0, math.ceil(width / tile)), (1, math.ceil(height / tile)))]
    box = int((span[0] * span[1]).sum())
    return {"pairs": int(pairs), "isects": int(tile_lists.numel()), "box_isects": box,
            "visible": int(records.shape[0])}


def merge_runs(a: dict, b: dict) -> dict:
    """Two bursts of the same worker as one: medians over all runs, the larger peak memory."""
    out = dict(a)
    out["fwd_all"], out["bwd_all"], out["cpu_all"] = (a[k] + b[k] for k in ("fwd_all", "bwd_all", "cpu_all"))
    for key, runs in (("fwd_ms", "fwd_all"), ("bwd_ms", "bwd_all"), ("cpu_ms", "cpu_all")):
        out[key] = statistics.median(out[runs])
    out["extra_mb"] = max(a["extra_mb"], b["extra_mb"])
    return out


def run_worker(impl, config, runs, timeout, spin):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--configs", config, "--runs", str(runs)]
    # the workers inherit the OpenMP wait settings `import recon` chose in main() (read once at start-up)
    env = dict(os.environ)
    if spin:  # libgomp's own default, whatever the caller's environment says
        env.pop("OMP_WAIT_POLICY", None)
        env["GOMP_SPINCOUNT"] = "300000"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="5k,50k,100k,300k")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline-runs", type=int, default=5)  # its ratio swung ~40% with 2
    parser.add_argument("--baseline-gb", type=float, default=3.0, help="skip the baseline above this estimate")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--omp-spin", action="store_true", help="libgomp's default busy-wait, not recon's")
    parser.add_argument("--worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.configs, args.runs)))
        return

    if args.omp_spin:
        policy = "GOMP_SPINCOUNT=300000 (libgomp's default)"
    else:
        import recon  # noqa: F401  (sets the product's OpenMP wait policy, for both workers)
        policy = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ)
    load_before = os.getloadavg()
    print(f"# {cpu_name()}, {os.cpu_count()} CPUs, {policy}, "
          f"load average {load_before[0]:.1f} at start")
    header = ("| size | ours fwd ms | ours bwd ms | ours best fwd+bwd ms | ours CPU ms | ours extra MB | "
              "baseline fwd ms | baseline bwd ms | baseline CPU ms | baseline extra MB | speed-up wall | "
              "speed-up CPU | pairs/pixel | isects | fwd ns/pair | bwd ns/pair |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for config in args.configs.split(","):
        n, width, height = CONFIGS[config]
        ours = run_worker("ours", config, args.runs, args.timeout, args.omp_spin)
        if "error" in ours:
            print(f"| {config} | error: {ours['error']} |")
            continue
        est_gb = ours["box_isects"] * 256 * BASELINE_BYTES_PER_PAIR / 2**30
        base = None
        if not args.no_baseline and est_gb <= args.baseline_gb:
            base = run_worker("baseline", config, args.baseline_runs, args.timeout, args.omp_spin)
            # ours again after the baseline: its runs take well under a second, so one burst would
            # sample the machine's load at a single moment while the baseline's span seconds
            again = run_worker("ours", config, args.runs, args.timeout, args.omp_spin)
            if "error" not in again:
                ours = merge_runs(ours, again)
        pairs_pp = ours["pairs"] / (width * height)
        fwd_ns = ours["fwd_ms"] * 1e6 / max(ours["pairs"], 1)
        bwd_ns = ours["bwd_ms"] * 1e6 / max(ours["pairs"], 1)
        if base and "error" not in base:
            speedup = (base["fwd_ms"] + base["bwd_ms"]) / (ours["fwd_ms"] + ours["bwd_ms"])
            speedup_cpu = base["cpu_ms"] / ours["cpu_ms"]
            base_cols = (f"{base['fwd_ms']:.0f} | {base['bwd_ms']:.0f} | {base['cpu_ms']:.0f} | {base['extra_mb']:.0f} "
                         f"| {speedup:.0f}x | {speedup_cpu:.0f}x")
            if abs(base["image_sum"] - ours["image_sum"]) > 1e-3 * max(1.0, abs(ours["image_sum"])):
                base_cols += " (images differ!)"
        elif base:
            base_cols = f"error: {base['error']} | | | | | "
        else:
            base_cols = f"not run (needs ~{est_gb:.0f} GB) | | | | | "
        label = f"{n // 1000}k @ {width}x{height}"
        best = min(f + b for f, b in zip(ours["fwd_all"], ours["bwd_all"]))
        print(f"| {label} | {ours['fwd_ms']:.1f} | {ours['bwd_ms']:.1f} | {best:.1f} | {ours['cpu_ms']:.1f} | "
              f"{ours['extra_mb']:.0f} | "
              f"{base_cols} | {pairs_pp:.0f} | {ours['isects']} | {fwd_ns:.2f} | {bwd_ns:.2f} |", flush=True)
    load_after = os.getloadavg()
    print(f"# threads {torch_threads()}, medians of {args.runs} runs (ours: twice that where the baseline ran, "
          f"before and after it; baseline {args.baseline_runs}); "
          f"load average {load_after[0]:.1f} at end")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
