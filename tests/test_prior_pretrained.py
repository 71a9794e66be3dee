"""The pretrained path with a tiny Stable Diffusion built from configs (no downloads): folder checks, loading
through recon's loader, img2img repair, ControlNet img2img, LoRA tuning."""
import json
import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from prior_fakes import one_thread, procedural_images  # noqa: F401 (one_thread: autouse fixture)

from recon.errors import ReconError
from recon.prior.config import PriorConfig
from recon.prior.lora import LoRALinear, add_lora, merge_lora
from recon.prior.pairs import PairSet
from recon.prior.pretrained import PretrainedRepairer, check_sd_folder, load_pipeline


def _byte_chars() -> list[str]:
    """The byte -> printable character table of byte-level BPE (GPT-2 / CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _tiny_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _byte_chars():
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def _tiny_parts():
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = _tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=8, sample_size=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=16))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A saved tiny SD folder and a tiny ControlNet folder."""
    from diffusers import ControlNetModel, StableDiffusionImg2ImgPipeline

    root = tmp_path_factory.mktemp("tiny_sd")
    parts = _tiny_parts()
    pipe = StableDiffusionImg2ImgPipeline(**parts, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(root / "sd")
    controlnet = ControlNetModel.from_unet(parts["unet"], conditioning_embedding_out_channels=(8, 16))
    controlnet.save_pretrained(root / "controlnet")
    return root


def _cfg(root, **kw) -> PriorConfig:
    return PriorConfig(mode="pretrained", model_path=str(root / "sd"), pretrained_size=32, sample_steps=2,
                       prompt="a torus", **kw)


def test_missing_or_incomplete_folder_is_one_clear_line(tmp_path, tiny_sd):
    with pytest.raises(ReconError, match="not found") as e:
        check_sd_folder(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReconError, match="no model_index.json"):
        check_sd_folder(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd / "sd", broken)
    shutil.rmtree(broken / "unet")
    for f in (broken / "vae").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ReconError, match=r"missing unet/, vae/ weights") as e:
        load_pipeline(broken)
    assert str(broken) in str(e.value) and "\n" not in str(e.value)
    (broken / "model_index.json").write_text("{not json")
    with pytest.raises(ReconError, match="not valid JSON"):
        check_sd_folder(broken)
    with pytest.raises(ReconError, match="ControlNet folder not found"):
        load_pipeline(tiny_sd / "sd", tmp_path / "no_controlnet")


def test_corrupt_weights_are_one_clear_line(tmp_path, tiny_sd):
    folder = tmp_path / "sd"
    shutil.copytree(tiny_sd / "sd", folder)
    for f in (folder / "unet").glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    with pytest.raises(ReconError, match="cannot load the pipeline") as e:
        load_pipeline(folder)
    assert str(folder) in str(e.value)


def test_a_hub_id_is_not_downloaded():
    with pytest.raises(ReconError, match="not found"):
        load_pipeline("runwayml/stable-diffusion-v1-5")


def test_tiny_pipeline_repairs_end_to_end(tiny_sd):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = load_pipeline(tiny_sd / "sd")
    assert isinstance(pipe, StableDiffusionImg2ImgPipeline) and pipe.safety_checker is None
    rep = PretrainedRepairer(pipe, _cfg(tiny_sd))
    images = procedural_images(2, 24, seed=3)
    out = rep.repair(images, [0.5, 0.0], generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[1], images[1])  # strength 0 leaves the render alone
    assert (out[0] - images[0]).abs().mean() > 1e-3  # an untrained tiny SD does change the image
    with pytest.raises(ValueError):
        rep.repair(images, [0.5])


def test_tiny_controlnet_pipeline_with_lora(tiny_sd):
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    cfg = _cfg(tiny_sd, controlnet_path=str(tiny_sd / "controlnet"), lora_steps=3, lora_rank=2, lora_lr=1e-2)
    clean = procedural_images(2, 24, seed=1)
    pairs = PairSet((clean * 0.5 + 0.2), clean, None, [0, 1], ["synthetic"] * 2)
    before = {k: v.clone() for k, v in load_pipeline(tiny_sd / "sd").unet.state_dict().items()}
    logs = []
    rep = PretrainedRepairer.from_config(cfg, pairs=pairs, generator=torch.Generator().manual_seed(0), log=logs.append)
    assert isinstance(rep.pipe, StableDiffusionControlNetImg2ImgPipeline) and rep.has_controlnet
    assert logs and "LoRA rank 2, 3 steps" in logs[0]
    after = rep.pipe.unet.state_dict()
    assert set(after) == set(before)  # merged back: plain Linear layers again
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out")) for k in changed)
    out = rep.repair(pairs.degraded, [0.6, 0.3], generator=torch.Generator().manual_seed(0))
    assert out.shape == pairs.degraded.shape and torch.isfinite(out).all()


def test_model_index_must_list_the_parts(tmp_path, tiny_sd):
    folder = tmp_path / "sd"
    shutil.copytree(tiny_sd / "sd", folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ReconError, match=r"text_encoder \(not in model_index.json\)"):
        check_sd_folder(folder)


def test_lora_starts_as_the_identity_and_merges_exactly():
    torch.manual_seed(0)
    net = torch.nn.Sequential()
    net.add_module("to_q", torch.nn.Linear(6, 5))
    net.add_module("other", torch.nn.Linear(5, 5))
    x = torch.randn(3, 6)
    ref = net(x)
    params = add_lora(net, rank=2)
    assert isinstance(net.to_q, LoRALinear) and len(params) == 2
    assert all(p.requires_grad for p in params) and not net.other.weight.requires_grad
    assert torch.allclose(net(x), ref)
    with torch.no_grad():
        net.to_q.up.weight.normal_()
    adapted = net(x)
    assert not torch.allclose(adapted, ref)
    assert merge_lora(net) == 1 and isinstance(net.to_q, torch.nn.Linear)
    assert torch.allclose(net(x), adapted, atol=1e-5)
    with pytest.raises(ValueError):
        add_lora(torch.nn.Sequential(torch.nn.ReLU()))


def test_lora_gradcheck():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(4, 3).double(), rank=2)
    with torch.no_grad():
        layer.up.weight.normal_()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
