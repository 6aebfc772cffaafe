"""The U-Net: shapes for every preset, gradients everywhere, the paper's parameter count, the same
function as diffusers' UNet2DModel after a key-for-key state-dict load, and it learns."""

import dataclasses
import types

import pytest
import torch

from ddpm_studio.config import PRESETS, ModelConfig, RunConfig
from ddpm_studio.engine.diffusion import GaussianDiffusion
from ddpm_studio.engine.schedules import NoiseSchedule
from ddpm_studio.engine.unet import UNet, build_model, count_parameters, default_norm_groups




@pytest.fixture(scope="module")
def paper_model():
    """The ddpm-cifar10 preset at 32 px, RGB, built once for the tests that need it."""
    cfg = RunConfig.from_preset("ddpm-cifar10", data={"image_size": 32, "channels": "3"}).model
    return cfg, build_model(cfg).eval()


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_preset_keeps_the_shape(preset, channels, paper_model):
    size = 32 if (preset, channels) == ("ddpm-cifar10", 3) else 16
    cfg = RunConfig.from_preset(preset, data={"image_size": size, "channels": str(channels)}).model
    model = paper_model[1] if (preset, channels) == ("ddpm-cifar10", 3) else build_model(cfg).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        y = model(x, torch.tensor([0, 999]))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_gradients_reach_every_parameter():
    for preset in ("tiny", "small"):
        cfg = RunConfig.from_preset(preset, data={"image_size": 16, "channels": "1"}).model
        torch.manual_seed(0)
        model = build_model(cfg).train()
        x = torch.randn(3, 1, 16, 16)
        model(x, torch.tensor([3, 500, 999])).square().mean().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
        assert not missing, f"{preset}: no gradient for {missing}"


def test_paper_model_has_35_7M_parameters(paper_model):
    model = paper_model[1]
    n = count_parameters(model)
    assert abs(n - 35.7e6) / 35.7e6 < 0.01, n
    assert model.spec.norm_groups == 32
    assert all(m.num_groups == 32 for m in model.modules() if isinstance(m, torch.nn.GroupNorm))


def test_default_norm_groups_rule():
    assert default_norm_groups(128, (1, 2, 2, 2)) == 32
    assert default_norm_groups(32, (1, 2, 2)) == 8
    assert default_norm_groups(64, (1, 2, 2, 2)) == 16
    assert default_norm_groups(40, (1, 2)) == 10  # divides 40, 80, 120, 160
    model = UNet(ModelConfig(image_size=8, base_channels=40, channel_mult=(1, 2), attention_resolutions=()))
    for m in model.modules():
        if isinstance(m, torch.nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0
    with pytest.raises(ValueError, match="norm_groups=32"):
        UNet(ModelConfig(image_size=8, base_channels=40, channel_mult=(1, 2)), norm_groups=32)


def test_invalid_config_is_refused_with_the_field_name():
    with pytest.raises(ValueError, match="model.image_size"):
        UNet(ModelConfig(image_size=12, channel_mult=(1, 2, 2, 2)))
    with pytest.raises(ValueError, match="num_heads"):
        UNet(ModelConfig(image_size=8, base_channels=24, channel_mult=(1,), num_heads=5))


def _diffusers_twin(cfg: ModelConfig, **kw):
    diffusers = pytest.importorskip("diffusers")
    L = len(cfg.channel_mult)
    att = cfg.attention_resolutions
    down = tuple("AttnDownBlock2D" if cfg.image_size // 2**i in att else "DownBlock2D" for i in range(L))
    up = tuple("AttnUpBlock2D" if cfg.image_size // 2 ** (L - 1 - i) in att else "UpBlock2D" for i in range(L))
    chans = tuple(cfg.base_channels * m for m in cfg.channel_mult)
    return diffusers.UNet2DModel(
        sample_size=cfg.image_size, in_channels=cfg.in_channels, out_channels=cfg.in_channels, block_out_channels=chans,
        layers_per_block=cfg.num_res_blocks, down_block_types=down, up_block_types=up, dropout=cfg.dropout,
        attention_head_dim=kw.get("attention_head_dim") or (chans[0] // cfg.num_heads if cfg.num_heads > 1 else None),
        norm_eps=1e-6, norm_num_groups=kw.get("norm_groups") or default_norm_groups(cfg.base_channels,
                                                                                    cfg.channel_mult),
        downsample_padding=kw.get("downsample_padding", 0), flip_sin_to_cos=kw.get("flip_sin_to_cos", False),
        freq_shift=kw.get("freq_shift", 1))


@pytest.mark.parametrize("cfg,kw", [
    (ModelConfig(image_size=16, in_channels=3, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                 attention_resolutions=(8,)), {}),
    (ModelConfig(image_size=8, in_channels=1, base_channels=16, channel_mult=(1, 1), num_res_blocks=2,
                 attention_resolutions=(8, 4), num_heads=2), dict(norm_groups=4, downsample_padding=1,
                                                                 flip_sin_to_cos=True, freq_shift=0)),
    (ModelConfig(image_size=8, in_channels=3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(4,)), dict(attention_head_dim=8)),
])
def test_same_function_as_diffusers_unet2dmodel_after_loading_its_state_dict(cfg, kw):
    torch.manual_seed(0)
    ref = _diffusers_twin(cfg, **kw).eval()
    ours = UNet(cfg, **kw).eval()
    sd = ref.state_dict()
    assert set(sd) == set(ours.state_dict())
    ours.load_state_dict(sd)  # strict: every key and shape must match
    x = torch.randn(3, cfg.in_channels, cfg.image_size, cfg.image_size)
    t = torch.tensor([0, 421, 999])
    with torch.no_grad():
        assert torch.allclose(ours(x, t), ref(x, t).sample, atol=1e-4)


def test_paper_model_has_diffusers_cifar10_keys_and_shapes(paper_model):
    cfg, ours = paper_model
    ref = _diffusers_twin(cfg)
    assert count_parameters(ref) == count_parameters(ours) == 35_746_307  # google/ddpm-cifar10-32
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ref_shapes == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_tiny_model_learns_l_simple_on_a_handful_of_images():
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=8, in_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(4,))
    model = UNet(cfg)
    d = GaussianDiffusion(NoiseSchedule.from_config("linear", 1000))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    # A fixed evaluation set: the same images, timesteps and noise before and after training.
    ev_x = images.repeat(32, 1, 1, 1)
    ev_t = torch.randint(0, 1000, (128,), generator=g)
    ev_noise = torch.randn(ev_x.shape, generator=g)

    def eval_loss():
        with torch.no_grad():
            return d.training_losses(model, ev_x, ev_t, ev_noise)[0].mean().item()

    before = eval_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, foreach=True)
    for _ in range(100):
        x = images[torch.randint(0, 4, (16,), generator=g)]
        loss, _ = d.training_losses(model, x, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        opt.step()
    after = eval_loss()
    assert before > 0.8  # an untrained network predicts ~0, so L_simple starts near E[eps^2] = 1
    assert after < 0.3 * before, (before, after)


def test_model_config_extra_fields_are_read_when_present():
    @dataclasses.dataclass
    class WithExtras(ModelConfig):
        norm_groups: int = 4
        downsample_padding: int = 1

    model = UNet(WithExtras(image_size=8, base_channels=16, channel_mult=(1, 2), attention_resolutions=()))
    assert model.spec.norm_groups == 4 and model.spec.downsample_padding == 1
    assert model.down_blocks[0].downsamplers[0].conv.padding == (1, 1)


def test_attention_runs_in_fp32_under_cpu_bf16_autocast_and_keeps_gradients():
    """Under bf16 autocast on a CPU the attention core is computed in fp32 (torch's bf16 flash backward is
    slow there): the result is bf16 and equals an fp32 attention of the same bf16 inputs, rounded once;
    gradients still reach q, k and v. Outside autocast it is plain scaled_dot_product_attention."""
    import torch.nn.functional as F

    from ddpm_studio.engine.unet import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 1, 64, 32, generator=g) for _ in range(3))
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(qb, kb, vb)
    assert out.dtype == torch.bfloat16
    want = F.scaled_dot_product_attention(qb.float(), kb.float(), vb.float()).bfloat16()
    assert torch.equal(out, want)
    out.float().square().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 and t.grad.abs().sum() > 0
               for t in (qb, kb, vb))


def test_a_patched_network_is_the_unpatched_one_on_pixel_unshuffled_images():
    """Oracle: patch_size P at S px == pixel_shuffle(net(pixel_unshuffle(x))) for the P=1 network at S / P px
    with P^2 times the channels, after a key-for-key load of the same weights."""
    cfg = ModelConfig(image_size=16, in_channels=3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(4,), patch_size=2)
    patched = build_model(cfg).eval()
    # the unpatched twin has 12 input channels, which no ModelConfig allows: build it from a plain namespace
    plain_cfg = types.SimpleNamespace(**{**dataclasses.asdict(cfg), "image_size": 8, "in_channels": 12,
                                         "patch_size": 1})
    plain = UNet(plain_cfg).eval()
    assert patched.spec.feature_size == 8 and count_parameters(patched) == count_parameters(plain)
    with torch.no_grad():
        for p in patched.parameters():
            p.normal_(0, 0.2)  # not the near-zero output init, so the comparison sees the whole network
    plain.load_state_dict(patched.state_dict())
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 7, 999])
    with torch.no_grad():
        want = torch.nn.functional.pixel_shuffle(plain(torch.nn.functional.pixel_unshuffle(x, 2), t), 2)
        got = patched(x, t)
    assert got.shape == x.shape and got.abs().mean() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # attention sits where the feature map is 4 px: level 1 of both networks
    assert patched.down_blocks[0].attentions is None and patched.down_blocks[1].attentions is not None


def test_patch_size_is_checked_against_the_image_size():
    with pytest.raises(ValueError, match="divisible by model.patch_size"):
        ModelConfig(image_size=18, patch_size=4).validate()
    with pytest.raises(ValueError, match="image_size / patch_size 4 must be divisible by 4"):
        ModelConfig(image_size=24, patch_size=4, channel_mult=(1, 2, 2)).validate()
    with pytest.raises(ValueError, match="patch_size"):
        ModelConfig(image_size=16, patch_size=3).validate()
    ModelConfig(image_size=32, patch_size=2).validate()


def test_tiny_32_is_tiny_on_2x2_patches_at_the_cost_of_tiny_at_16_px():
    """The GUI switches between the two by image size and keeps the forms: that needs every setting but the
    patch (and the size it was tuned at) to be the same."""
    from ddpm_studio import footprint

    tiny, t32 = PRESETS["tiny"], PRESETS["tiny-32"]
    assert {k: v for k, v in t32["model"].items() if k != "patch_size"} == tiny["model"]
    assert t32["model"]["patch_size"] == 2
    assert t32["train"] == tiny["train"] and t32["diffusion"] == tiny["diffusion"]
    at32 = RunConfig.from_preset("tiny-32", data={"channels": "3"}).model
    at16 = RunConfig.from_preset("tiny", data={"channels": "3"}).model
    assert at32.image_size == 32 and at16.image_size == 16
    # what autograd keeps per image: tiny-32 at 32 px keeps what tiny keeps at 16 px, plus the 32 px input
    assert footprint.activation_values(at32) - 3 * 32 * 32 == footprint.activation_values(at16) - 3 * 16 * 16
