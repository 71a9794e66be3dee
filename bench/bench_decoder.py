"""Decoder cost per training iteration: forward + backward of GaussianDecoder.decode (what a training step
runs: the higher SH orders once per voxel) on ~20k voxels, and,
when recon.render.rasterize is available, the ratio to rasterising the same Gaussians (forward +
backward, one 400x400 view). The target is that the decoder adds at most 30 % to an iteration.

    nice python bench/bench_decoder.py [--voxels 20000] [--threads 1 2] [--reps 5] [--sh-degree 3]

Prints one line per thread count, with the decoder's time when its convs run in spconv (the CPU
baseline our sparse-conv kernel replaces) measured in the same run. On a shared, oversubscribed
machine two-thread timings of many small ops are dominated by waiting for the second thread; the load
average is printed alongside.

Then a full training iteration (recon.train: pick a view, render, loss, backward, optimizer step) with
the decoder (StructuredTrainer, voxel management off) against free Gaussians (Trainer, no densification)
of the same count, on 4 synthetic 400x400 views of the shell: `iteration with/without decoder` is the
figure the issue bounds (<= 1.30).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch

from recon.decoder.config import DecoderConfig
from recon.decoder.decoder import GaussianDecoder
from recon.init.voxels import SparseVoxels


def shell_voxels(target: int, level: int = 128) -> SparseVoxels:
    """A one-voxel-thick spherical shell (a surface, as carving gives) with about `target` voxels."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(level)] * 3, indexing="ij"), -1).reshape(-1, 3)
    r = ((grid.float() - (level - 1) / 2) ** 2).sum(-1).sqrt()
    r_in = math.sqrt(target / (4 * math.pi * 1.0))  # area * thickness(1 cell) ~ target
    r_in = min(r_in, level / 2 - 3)
    coords = grid[(r > r_in) & (r < r_in + 1.0)].to(torch.int32)
    g = torch.Generator().manual_seed(0)
    m = coords.shape[0]
    feats = torch.cat([torch.rand(m, 3, generator=g), torch.rand(m, 1, generator=g) * 0.2,
                       torch.randint(1, 9, (m, 1), generator=g).float()], 1)
    return SparseVoxels(coords, feats, 2.0 / level, torch.tensor([-1.0, -1.0, -1.0]), level)


def _time(fn, reps: int) -> tuple[float, float]:
    """Median wall and process-CPU milliseconds per call. On a shared machine the CPU time is the
    steadier figure (with one thread it is the work done, whatever else runs)."""
    fn()  # warm-up (first spconv call, kernel builds)
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def _camera(width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One pinhole camera looking at the origin along +z (OpenCV axes: x right, y down, z forward)."""
    viewmat = torch.eye(4)
    viewmat[2, 3] = 1.5  # world origin 1.5 units in front: the ~0.6-radius test object fills most of the frame
    f = 0.9 * width
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    return viewmat[None], K[None]


def orbit_scene(gaussians, n_views: int, size: int, sh_degree: int):
    """A Scene of `n_views` cameras around the origin whose images are renders of `gaussians` (so the
    loss is a real one), for timing Trainer / StructuredTrainer steps without data on disk."""
    from pathlib import Path

    from recon.data.cameras import Cameras
    from recon.data.scene import Normalization, Scene
    from recon.render import rasterize

    c2ws = []
    for i in range(n_views):
        a = 2 * math.pi * i / n_views
        eye = torch.tensor([1.5 * math.cos(a), 1.5 * math.sin(a), 0.4])
        fwd = -eye / eye.norm()
        right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0]))
        right = right / right.norm()
        down = torch.linalg.cross(fwd, right)
        c2w = torch.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, fwd, eye
        c2ws.append(c2w)
    f = 0.9 * size
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])
    cams = Cameras(torch.stack(c2ws), K.expand(n_views, 3, 3).clone(), size, size)
    g = gaussians
    with torch.no_grad():
        imgs, _, _ = rasterize(g.means, g.quats, torch.exp(g.log_scales), torch.sigmoid(g.opacity_logits), g.sh,
                               cams.viewmats, cams.Ks, size, size, sh_degree=sh_degree,
                               backgrounds=torch.ones(n_views, 3))
    images = (imgs.clamp(0, 1) * 255).round().to(torch.uint8)
    return Scene(Path("synthetic"), "synthetic", [f"v{i}" for i in range(n_views)], images, None, cams,
                 list(range(n_views)), [], Normalization.identity())


def iteration_ratio(voxels, dec_cfg: DecoderConfig, sh_degree: int, size: int, reps: int) -> str:
    """One line: ms per full training step with the decoder, without it, and their ratio."""
    from recon.decoder.voxel_management import bake
    from recon.train.config import TrainConfig
    from recon.train.structured import StructuredTrainer
    from recon.train.trainer import Trainer

    cfg = TrainConfig(iterations=10**6, sh_degree=sh_degree, sh_degree_every=0.0, strategy="none",
                      checkpoint_every=0)
    dec_cfg = DecoderConfig(**{**dec_cfg.__dict__, "manage_every": 0})
    quiet = lambda msg: None
    # targets: renders of the initial decode (a real loss; the timing does not depend on the content)
    scene = orbit_scene(bake(GaussianDecoder(dec_cfg, voxels, sh_degree=sh_degree), voxels), 4, size, sh_degree)
    structured = StructuredTrainer(scene, scene.train_idx, voxels, cfg, dec_cfg, log=quiet)
    free = Trainer(scene, scene.train_idx, bake(structured.decoder, voxels), cfg, log=quiet)

    def run(trainer):
        def one():
            trainer.step()
            trainer.state.step += 1
        return one

    with_ms, with_cpu = _time(run(structured), reps)
    free_ms, free_cpu = _time(run(free), reps)
    n = len(free.gaussians())
    return (f"full iteration ({n} Gaussians, {size}x{size}): with decoder {with_ms:.0f} ms (cpu {with_cpu:.0f}), "
            f"free Gaussians {free_ms:.0f} ms (cpu {free_cpu:.0f}); iteration with/without decoder = "
            f"{with_ms / free_ms:.2f}, cpu {with_cpu / free_cpu:.2f} (target <= 1.30)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--voxels", type=int, default=20000)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sh-degree", type=int, default=3)
    ap.add_argument("--size", type=int, default=400)
    ap.add_argument("--channels", type=int, nargs="+", default=None, help="override decoder.channels")
    ap.add_argument("--fine-convs", action="store_true", help="decoder.fine_convs=true")
    ap.add_argument("--no-iteration", action="store_true", help="skip the full-training-iteration comparison")
    args = ap.parse_args()

    torch.manual_seed(0)
    voxels = shell_voxels(args.voxels)
    cfg = DecoderConfig(fine_convs=args.fine_convs)
    if args.channels:
        cfg.channels = args.channels
    decoder = GaussianDecoder(cfg, voxels, sh_degree=args.sh_degree)
    n_gauss = len(voxels) * cfg.gaussians_per_voxel

    # the gradients the rasterizer's backward would hand to the decoded Gaussians (as a training step
    # decodes them: the higher SH orders once per voxel)
    # (at SH degree 0 there are no higher orders: the empty sh_rest has no gradient)
    def outputs():
        return [t for t in decoder.decode(voxels).tensors() if t.requires_grad]

    grads = [torch.randn_like(t) * 1e-3 for t in outputs()]

    def decoder_step():
        torch.autograd.backward(outputs(), grads)

    try:
        from recon.render.rasterize import rasterize
    except ImportError:
        rasterize = None
    with torch.no_grad():
        leaves = [t.detach().clone() for t in decoder.decode(voxels).tensors()]
    viewmats, Ks = _camera(args.size, args.size)

    def raster_step():
        means, quats, log_scales, opacity_logits, sh0, sh_rest = (t.clone().requires_grad_(True) for t in leaves)
        colors, alphas, _meta = rasterize(means, quats, torch.exp(log_scales), torch.sigmoid(opacity_logits),
                                          (sh0, sh_rest), viewmats, Ks, args.size, args.size, sh_degree=args.sh_degree)
        (colors.square().mean() + alphas.mean()).backward()

    load = os.getloadavg()[0]
    print(f"{len(voxels)} voxels x K={cfg.gaussians_per_voxel} = {n_gauss} Gaussians, SH degree "
          f"{args.sh_degree}, U-Net {cfg.channels} fine_convs={cfg.fine_convs}; {os.cpu_count()} CPUs, load average {load:.1f}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        dec_ms, dec_cpu = _time(decoder_step, args.reps)
        line = f"threads={threads}: decoder forward+backward {dec_ms:.0f} ms (cpu {dec_cpu:.0f} ms)"
        if not torch.cuda.is_available():
            # baseline in the same run: the same decoder with spconv's CPU convs (recon's patched path)
            decoder.unet.backend = "spconv"
            base_ms, _ = _time(decoder_step, args.reps)
            decoder.unet.backend = "auto"
            line += f" [with spconv's CPU convs {base_ms:.0f} ms: {base_ms / dec_ms:.1f}x]"
        if rasterize is not None:
            try:
                ras_ms, ras_cpu = _time(raster_step, args.reps)
            except Exception as e:  # the rasterizer is another engineer's work in progress
                line += f"; rasterize failed ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
            else:
                line += (f"; rasterize {args.size}x{args.size} forward+backward {ras_ms:.0f} ms (cpu {ras_cpu:.0f} ms); "
                         f"decoder/rasterize = {dec_ms / ras_ms:.2f}, cpu {dec_cpu / ras_cpu:.2f} (rasterizing alone; the bound is on the full iteration)")
        else:
            line += "; recon.render.rasterize not available"
        print(line, flush=True)
        if rasterize is not None and not args.no_iteration:
            print(f"threads={threads}: " + iteration_ratio(voxels, cfg, args.sh_degree, args.size, args.reps), flush=True)


if __name__ == "__main__":
    main()
