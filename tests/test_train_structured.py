"""StructuredTrainer: the decoder trained end to end through the rasterizer on the embedded sample (48 px,
a few dozen steps): the loss falls and held-out views beat the initialisation, voxel management keeps the
latents aligned, baking hands over to free Gaussians without changing the picture, checkpoints load with
weights_only=True and resume, and mismatched checkpoints or settings are one-line user errors."""
from __future__ import annotations

import dataclasses
import math
import json
from pathlib import Path

import pytest
import torch

from recon.config import load_config
from recon.data.load import load_scene
from recon.decoder.config import DecoderConfig
from recon.errors import ReconError
from recon.train.config import TrainConfig
from recon.train.evaluate import eval_background, render_views, evaluate
from recon.train.structured import StructuredTrainer
from recon.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
# small U-Net, 2 Gaussians per voxel, full learning rates from the first step
DEC = dict(gaussians_per_voxel=2, channels=[8, 16], latent_dim=4, manage_every=0)
TRAIN = dict(sh_degree=1, sh_degree_every=0.0, strategy="none", checkpoint_every=0, log_every=1, background="white")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # on a shared, oversubscribed 2-core box two-thread small ops stall; one thread also keeps runs repeatable
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sample():
    """The sample at 48 px with 8 views, and its carved voxels (coarse levels: a few thousand voxels)."""
    from recon.init.initialize import initialize

    cfg = load_config("default", ["data.max_size=48", "data.views=8", "init.levels=[16, 32, 64]"])
    scene = load_scene(SAMPLE, cfg.data)
    res = initialize(scene, scene.train_idx, cfg.init)
    return scene, res.voxels


def make(scene, voxels, out_dir=None, train=None, dec=None, log=None):
    tcfg = TrainConfig(**{**TRAIN, **(train or {})})
    dcfg = DecoderConfig(**{**DEC, **(dec or {})})
    return StructuredTrainer(scene, scene.train_idx, voxels, tcfg, dcfg, out_dir=out_dir, seed=0,
                             log=log or (lambda msg: None))


def heldout_psnr(scene, g, sh_degree):
    return evaluate(g, scene, scene.test_idx, sh_degree, None, eval_background(scene))["psnr"]


def test_training_lowers_the_loss_and_beats_the_initialisation(sample):
    scene, voxels = sample
    t = make(scene, voxels, train=dict(iterations=48))
    before = heldout_psnr(scene, t.gaussians().detach(), 1)
    g = t.train()
    losses = [h["loss"] for h in t.state.history]
    after = heldout_psnr(scene, g, 1)
    print(f"{len(voxels)} voxels; loss {sum(losses[:8]) / 8:.4f} -> {sum(losses[-8:]) / 8:.4f}; "
          f"held-out PSNR {before:.2f} -> {after:.2f} dB")
    assert t.state.step == 48 and t.phase == "decoder"
    assert sum(losses[-8:]) < 0.8 * sum(losses[:8])  # one epoch of 8 views at each end
    assert after > before + 1.0
    # the output is free Gaussians: detached, at most K per voxel, none too transparent to matter
    assert 0 < len(g) <= 2 * len(t.voxels) and not g.means.requires_grad
    assert bool((g.opacities >= 1 / 255).all())
    # only the decoder's parameters are optimised
    assert t.params is None and t.optimizers == {}


def test_voxel_management_keeps_latents_and_moments_aligned(sample):
    scene, voxels = sample
    logs = []
    # grow_grad=0: every visible voxel may grow, capped 40 above the start; prune the most transparent
    t = make(scene, voxels, train=dict(iterations=9), log=logs.append,
             dec=dict(manage_every=4, grow_grad=0.0, max_voxels=len(voxels) + 40, prune_opacity=0.05))
    t.train()
    assert any("voxels -" in line for line in logs), logs
    m = len(t.voxels)
    assert m != len(voxels)
    assert t.decoder.num_voxels == m and len(t.voxel_stats) == m
    exp_avg = t.decoder_optimizer.state[t.decoder.latents]["exp_avg"]
    assert exp_avg.shape == t.decoder.latents.shape
    assert len(t.gaussians()) == m * 2


def test_per_voxel_sh_render_equals_the_expanded_gaussians(sample):
    """A step renders the decode with the higher SH orders once per voxel (rasterize's shared rows), not the
    expanded Gaussians: the same image, and to rounding the same gradients, as with them repeated."""
    scene, voxels = sample
    t = make(scene, voxels)
    dec = t.decoder
    expanded_forward = dec.forward
    dec.forward = lambda *a: pytest.fail("the training step decoded the expanded Gaussians")
    t.step()
    dec.forward = expanded_forward
    with torch.no_grad():
        dec.sh_head.weight.normal_(std=0.3, generator=torch.Generator().manual_seed(0))
    vm, K, bg = t.viewmats[:1], t.Ks[:1], torch.ones(3)
    weights = [dec.sh_head.weight, dec.head.weight, dec.latents]
    d = dec.decode(t.voxels)
    shared = t.render(d, vm, K, bg, 1)[0]
    g_shared = torch.autograd.grad(shared.square().sum(), weights)
    expanded = t.render(dec(t.voxels), vm, K, bg, 1)[0]
    g_expanded = torch.autograd.grad(expanded.square().sum(), weights)
    assert d.sh_rest.shape == (len(t.voxels), 3, 3) and d.sh0.shape == (2 * len(t.voxels), 1, 3)
    torch.testing.assert_close(shared, expanded, rtol=0, atol=0)
    for a, b in zip(g_shared, g_expanded):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_sh_degree_zero_step(sample):
    """Degree 0: no SH head, an empty per-voxel rest goes to the rasterizer, and the step still trains."""
    scene, voxels = sample
    t = make(scene, voxels, train=dict(sh_degree=0, iterations=4))
    assert t.decoder.sh_head is None and t.decoder.decode(t.voxels).sh_rest.shape == (len(t.voxels), 0, 3)
    before = t.decoder.head.weight.detach().clone()
    out = t.step()
    assert out["sh_degree"] == 0 and math.isfinite(out["loss"])
    assert not torch.equal(before, t.decoder.head.weight)


def test_bake_hands_over_to_free_gaussians_without_changing_the_render(sample):
    scene, voxels = sample
    t = make(scene, voxels, train=dict(iterations=20, strategy="default", refine_every=2, refine_start=0.1),
             dec=dict(bake=True, bake_fraction=0.5))
    for _ in range(10):
        t.step()
        t.state.step += 1
    bg, views = torch.ones(3), scene.train_idx[:2]
    with torch.no_grad():
        before, _ = render_views(t.gaussians(), scene, views, bg, 1)
    t.bake()  # what step() does once progress reaches bake_fraction
    after, _ = render_views(t.gaussians(), scene, views, bg, 1)
    # dropped Gaussians (opacity < 1/255) are the ones the rasterizer skips anyway
    assert (before - after).abs().max() < 1e-5
    assert t.phase == "baked" and t.bake_step == 10 and t.decoder is None
    assert set(t.params) == {"means", "quats", "scales", "opacities", "sh0", "shN"}
    assert all(p.requires_grad and p.is_leaf for p in t.params.values())
    # the densification schedule is laid over the 10 steps left
    assert t.strategy is not None and t.strategy_start == 10 and t.strategy_span == 10
    g = t.train()
    assert t.state.step == 20 and t.phase == "baked" and len(g) == t.params["means"].shape[0]


def test_checkpoint_loads_weights_only_and_resume_continues_exactly(sample, tmp_path):
    scene, voxels = sample
    dec = dict(manage_every=8, grow_grad=0.0, max_voxels=len(voxels) + 20)
    full = make(scene, voxels, tmp_path / "full", train=dict(iterations=24), dec=dec)
    full.train()
    # the same run, stopped after 16 steps (as Ctrl-C would: Trainer.train saves and raises)
    part = make(scene, voxels, tmp_path / "part", train=dict(iterations=24), dec=dec)
    for _ in range(16):
        part.step()
        part.state.step += 1
    part.save()
    ckpt = torch.load(part.checkpoint_path, weights_only=True)
    assert ckpt["stage"] == "decoder" and ckpt["step"] == 16
    assert ckpt["voxels"]["coords"].shape[0] == ckpt["decoder"]["latents"].shape[0] == len(part.voxels)

    resumed = make(scene, voxels, tmp_path / "part", train=dict(iterations=24), dec=dec)
    resumed.train(resume=True)
    assert resumed.state.step == 24
    assert torch.equal(resumed.voxels.coords, full.voxels.coords)
    for (name, a), b in zip(full.decoder.state_dict().items(), resumed.decoder.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_resume_after_bake(sample, tmp_path):
    scene, voxels = sample
    t = make(scene, voxels, tmp_path, train=dict(iterations=8, strategy="default"), dec=dict(bake=True))
    t.train()
    assert torch.load(t.checkpoint_path, weights_only=True)["stage"] == "baked"
    r = make(scene, voxels, tmp_path, train=dict(iterations=12, strategy="default"), dec=dict(bake=True))
    assert r.resume()
    assert r.phase == "baked" and r.bake_step == 4 and r.strategy_start == 4 and r.state.step == 8
    assert torch.equal(r.params["means"], t.params["means"])
    r.train()
    assert r.state.step == 12


def test_mismatched_checkpoints_are_user_errors(sample, tmp_path):
    scene, voxels = sample
    t = make(scene, voxels, tmp_path / "dec", train=dict(iterations=2))
    t.train()
    # a plain Trainer cannot continue the decoder stage
    free = Trainer(scene, scene.train_idx, t.gaussians().detach(), TrainConfig(**TRAIN), out_dir=tmp_path / "dec")
    with pytest.raises(ReconError, match="decoder stage"):
        free.resume()
    # different decoder settings
    other = make(scene, voxels, tmp_path / "dec", dec=dict(channels=[8, 8]))
    with pytest.raises(ReconError, match="does not fit.*size mismatch"):  # names the mismatch
        other.resume()
    # a decoder checkpoint from before the separate SH head (the head decoded the higher SH orders too)
    from recon.train.checkpoint import read_checkpoint, write_checkpoint

    path = tmp_path / "dec" / "checkpoints" / "last.pt"
    ckpt = read_checkpoint(path)
    head_w, sh_w = ckpt["decoder"].pop("head.weight"), ckpt["decoder"].pop("sh_head.weight")
    ckpt["decoder"]["head.weight"] = torch.cat([head_w, torch.zeros(sh_w.shape[0], head_w.shape[1])])
    ckpt["decoder"].pop("sh_head.bias")
    write_checkpoint(tmp_path / "old" / "checkpoints" / "last.pt", ckpt)
    with pytest.raises(ReconError, match="older recon"):
        make(scene, voxels, tmp_path / "old").resume()
    # a free-Gaussian checkpoint is not the decoder's
    free2 = Trainer(scene, scene.train_idx, t.gaussians().detach(), TrainConfig(**{**TRAIN, "iterations": 1}),
                    out_dir=tmp_path / "free")
    free2.train()
    s = make(scene, voxels, tmp_path / "free")
    with pytest.raises(ReconError, match="without the decoder"):
        s.resume()
    # a foreign file
    (tmp_path / "junk" / "checkpoints").mkdir(parents=True)
    (tmp_path / "junk" / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ReconError, match="cannot read"):
        make(scene, voxels, tmp_path / "junk").resume()


def test_bad_settings_and_voxels(sample):
    scene, voxels = sample
    for bad in (dict(bake_fraction=1.5), dict(lr_final_factor=0.0), dict(bake_min_opacity=1.0)):
        with pytest.raises(ReconError, match="decoder\\."):
            make(scene, voxels, dec=bad)
    grey = dataclasses.replace(voxels, features=voxels.features[:, 3:], feature_names=voxels.feature_names[3:])
    with pytest.raises(ReconError, match="colour"):
        make(scene, grey)


def test_reconstruct_with_decoder_and_bake_end_to_end(tmp_path):
    from recon.api import reconstruct

    out = tmp_path / "out"
    res = reconstruct(SAMPLE, out, "fast", views=8, iterations=12, overrides=[
        "data.max_size=48", "init.levels=[16, 32, 64]", "decoder.enabled=true", "decoder.bake=true",
        "decoder.channels=[8, 16]", "export.mesh=false", "export.splat=false", "train.checkpoint_every=0"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["iterations"] == 12 and m["psnr"] is not None and res.ply.is_file()
    log = (out / "log.txt").read_text()
    assert "decoder:" in log and "baked" in log
    # the decoder needs the carved voxels
    with pytest.raises(ReconError, match="init.method"):
        reconstruct(SAMPLE, tmp_path / "o2", "fast", views=8, iterations=2,
                    overrides=["data.max_size=48", "init.method=random", "decoder.enabled=true"])
