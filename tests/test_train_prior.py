"""The diffusion prior inside `recon reconstruct` (recon.train.prior_hook): tiny runs on the embedded sample
(48 px, a few dozen steps, a tiny repair model built from config)."""
from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from recon.cli import app
from recon.config import load_config
from recon.errors import ReconError
from recon.train.prior_hook import PriorHook, check_prior_ready, downscaled_scene, make_prior_hook

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
# random init keeps these tests independent of (and faster than) voxel carving
BASE = ["data.max_size=48", "data.views=4", "init.method=random", "init.n_random=1500", "export.mesh=false",
        "train.checkpoint_every=0", "train.log_every=1", "train.time_budget=null"]
TINY_PRIOR = ["prior.block_out_channels=[16,32]", "prior.train_crop=16", "prior.train_batch=4", "prior.train_steps=3",
              "prior.sample_steps=2", "prior.novel_views=3", "prior.perturb_per_view=1", "prior.loo_iterations=3",
              "prior.cycles=2", "prior.loo_max_size=32"]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: two threads on a shared, busy 2-core machine mostly wait on each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def tiny_trainer(tmp_path=None, iterations=20, prior=("prior.mode=repair",), extra_loss="hook"):
    from recon.data.load import load_scene
    from recon.pipeline import initial_gaussians
    from recon.train.trainer import Trainer

    cfg = load_config("fast", BASE + TINY_PRIOR + list(prior) + [f"train.iterations={iterations}"])
    scene = load_scene(SAMPLE, cfg.data)
    _, init = initial_gaussians(scene, scene.train_idx, cfg, lambda m: None)
    hook = make_prior_hook(cfg, scene, tmp_path, lambda m: None) if extra_loss == "hook" else extra_loss
    trainer = Trainer(scene, scene.train_idx, init, cfg.train, out_dir=tmp_path, seed=cfg.seed,
                      background=cfg.data.background, log=lambda m: None, extra_loss=hook)
    return trainer, hook


@pytest.fixture(scope="module")
def prior_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "out"
    r = run_cli("reconstruct", SAMPLE, "-o", out, "--config", "fast", "--iterations", 30, "--prior", "repair",
                *sets(BASE + TINY_PRIOR))
    assert r.exit_code == 0, r.output
    return out


def test_repair_run_finishes_with_repaired_views(prior_run):
    out = prior_run
    m = json.loads((out / "metrics.json").read_text())
    assert m["prior"] == "repair" and m["iterations"] == 30 and m["psnr"] is not None
    cycles = sorted(p.name for p in (out / "prior").glob("cycle_*"))
    assert cycles == ["cycle_0", "cycle_1"]
    for c in cycles:
        repaired = sorted((out / "prior" / c).glob("*_repaired.png"))
        renders = sorted((out / "prior" / c).glob("*_render.png"))
        assert len(repaired) == len(renders) == 3
    assert (out / "prior" / "repair_model" / "repair.json").is_file()
    log = (out / "log.txt").read_text()
    assert log.count("leave-one-out reconstruction without view") == 4  # one per training view
    assert "prior: built" in log
    assert not list(out.rglob("*.tmp*"))


def test_resume_past_the_prior_start_rebuilds_it(prior_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(prior_run, out)
    r = run_cli("reconstruct", SAMPLE, "-o", out, "--config", "fast", "--iterations", 40, "--prior", "repair",
                "--resume", *sets(BASE + TINY_PRIOR))
    assert r.exit_code == 0, r.output
    log = (out / "log.txt").read_text()
    assert "resumed from" in log and log.count("prior: built") == 2
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 40


def test_missing_or_incomplete_model_folder_exits_2_before_training(tmp_path):
    out = tmp_path / "out"
    r = run_cli("reconstruct", SAMPLE, "-o", out, "--prior-model", tmp_path / "no_such_sd")
    assert r.exit_code == 2
    assert "no_such_sd" in r.output and "Traceback" not in r.output
    assert not out.exists()  # refused before anything was written
    half = tmp_path / "half_sd"
    half.mkdir()
    (half / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
    r = run_cli("reconstruct", SAMPLE, "-o", out, "--prior", "pretrained", "--prior-model", half)
    assert r.exit_code == 2 and "incomplete" in r.output and not out.exists()
    r = run_cli("reconstruct", SAMPLE, "-o", out, "--prior", "pretrained")  # no folder at all
    assert r.exit_code == 2 and "--prior-model" in r.output


def test_bad_prior_options_exit_2(tmp_path):
    out = tmp_path / "out"
    for args in (["--prior", "magic"], ["--prior", "repair", "--prior-model", tmp_path],
                 ["--prior", "repair", "--set", "prior.build_share=0.6"]):
        r = run_cli("reconstruct", SAMPLE, "-o", out, *args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output and not out.exists()
    with pytest.raises(ReconError):
        check_prior_ready(load_config("fast", ["prior.mode=repair", "prior.loo_max_size=4"]).prior)


def test_one_line_for_a_missing_folder(tmp_path):
    r = run_cli("reconstruct", SAMPLE, "-o", tmp_path / "o", "--prior-model", tmp_path / "nothing_here")
    assert r.exit_code == 2
    # rich may wrap a long line on a narrow terminal; the message is a single "error:" record
    assert r.output.count("error:") == 1 and "not found" in r.output


def test_prior_off_leaves_the_trainer_identical():
    cfg = load_config("fast", BASE)
    assert cfg.prior.mode == "none" and make_prior_hook(cfg, None, None, print) is None
    plain, _ = tiny_trainer(iterations=12, extra_loss=None)
    plain.train()
    # before its start (every step here: 11/12 < 0.95) the hook adds an exact zero and draws no random numbers
    hooked, hook = tiny_trainer(iterations=12, prior=("prior.mode=repair", "prior.start=0.95",
                                                                     "prior.build_share=0.01"))
    hooked.train()
    assert not hook.built
    a = [h["loss"] for h in plain.state.history]
    b = [h["loss"] for h in hooked.state.history]
    assert len(a) == 12 and a == b
    for k in plain.params:
        assert torch.equal(plain.params[k], hooked.params[k]), k


def test_hook_builds_at_start_and_adds_the_distillation_loss(tmp_path):
    from recon.prior.images import split_render
    from recon.train.losses import photometric_loss

    trainer, hook = tiny_trainer(tmp_path, iterations=20)
    for _ in range(10):  # up to prior.start = 0.5
        trainer.step()
        trainer.state.step += 1
    assert not hook.built
    rng, gen = torch.get_rng_state(), trainer.generator.get_state()
    loss = hook(trainer, trainer.state.step)
    assert hook.built and hook.distiller is not None and hook.distiller.cycle == 1  # first cycle at once
    # leave-one-out trainers reseed torch; the run's own random streams are untouched
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(trainer.generator.get_state(), gen)
    assert hook.refresh_at == [pytest.approx(0.75)]  # the second cycle halfway through what is left
    # the value: prior.weight * photometric loss of the current render against the repaired target
    d = hook.distiller
    i = d.view_for_step(trainer.state.step)
    rgb, _ = split_render(hook._render_current(trainer, d.cameras[i]))
    ref = d.cfg.weight * photometric_loss(rgb[None], d.targets[i][None], d.cfg.ssim_weight)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5) and loss.item() > 0
    loss.backward()
    assert trainer.params["sh0"].grad is not None and trainer.params["sh0"].grad.abs().sum() > 0


def test_build_interrupted_by_ctrl_c_saves_a_checkpoint(tmp_path):
    from recon.train.trainer import TrainingInterrupted

    trainer, hook = tiny_trainer(tmp_path, iterations=20)
    real_init = hook.init_fn

    def init_then_ctrl_c(scene, idx):
        signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C during the build
        return real_init(scene, idx)

    hook.init_fn = init_then_ctrl_c
    with pytest.raises(TrainingInterrupted) as e:
        trainer.train()
    assert e.value.step == 11 and e.value.checkpoint.is_file()  # the step that started the build
    assert not hook.built and hook.distiller is None


def test_downscaled_scene_scales_images_masks_and_intrinsics():
    from recon.data.load import load_scene

    scene = load_scene(SAMPLE, load_config("fast", BASE).data)
    assert downscaled_scene(scene, 64) is scene  # already small enough
    small = downscaled_scene(scene, 24)
    assert (small.width, small.height) == (24, 24) and small.images.shape[1:] == (24, 24, 3)
    assert small.masks.shape[1:] == (24, 24) and small.images.dtype == torch.uint8
    assert torch.allclose(small.cameras.Ks[:, :2], scene.cameras.Ks[:, :2] * 0.5)
    # the same world point projects to half the pixel coordinates
    p = torch.tensor([[0.1, -0.2, 0.05]], dtype=torch.float64)
    uv, _ = scene.cameras.project(p)
    uv_small, _ = small.cameras.project(p)
    assert torch.allclose(uv_small, uv * 0.5, atol=1e-6)
    # mean colour survives the resize
    assert abs(small.images.float().mean() - scene.images.float().mean()) < 2.0


def test_hook_refuses_mode_none():
    cfg = load_config("fast", BASE)
    with pytest.raises(ValueError):
        PriorHook(cfg.prior, cfg.train, lambda s, i: None, torch.ones(3))


def test_refresh_cycles_are_fitted_into_the_time_budget():
    from recon.prior.distill import PriorDistiller
    from recon.prior.novel_cameras import sample_novel_cameras

    trainer, hook = tiny_trainer(iterations=1000)
    novel = sample_novel_cameras(trainer.scene.cameras[trainer.train_idx], 3, generator=torch.Generator().manual_seed(0))
    trainer.cfg.time_budget, trainer.state.elapsed = 10.0, 8.0  # 2 s of the run are left, half for repairs
    for per_view, views, cycles in ((0.15, 3, 2), (0.3, 1, 2), (0.6, 1, 1)):
        hook.distiller = PriorDistiller(None, novel, hook.cfg)
        hook._called_at = time.perf_counter()
        assert hook._fit_refreshes(trainer, per_view) == cycles, per_view
        assert len(hook.distiller) == len(hook.distiller.strengths) == views, per_view
    hook.distiller = PriorDistiller(None, novel, hook.cfg)
    assert hook._fit_refreshes(trainer, 5.0) == 0 and hook.distiller is None  # not even one repair fits


def test_prior_is_skipped_before_building_when_repairs_would_not_fit(tmp_path):
    trainer, hook = tiny_trainer(tmp_path, iterations=1000)
    trainer.cfg.time_budget, trainer.state.elapsed = 100.0, 55.0
    hook._time_one_repair = lambda *args: 60.0  # a repair slower than the whole run has left
    hook.init_fn = lambda *args: pytest.fail("a leave-one-out reconstruction was started")
    hook._called_at = time.perf_counter()
    assert hook._build(trainer) and hook.built and hook.distiller is None
    assert hook(trainer, 0).item() == 0.0
    assert not (tmp_path / "prior").exists()
