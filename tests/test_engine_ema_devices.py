"""EMA with warm-up, and device / precision selection."""

import pytest
import torch
from torch import nn

from ddpm_studio.engine.devices import autocast, describe_device, select_device, uses_grad_scaler
from ddpm_studio.engine.ema import EMA


def test_ema_follows_the_closed_form_with_warmup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.99, warmup=True)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    shadow = model[0].weight.detach().double().clone()
    for step in range(40):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model[1].running_mean.add_(1.0)
        ema.update(model, step)
        d = min(0.99, (1 + step) / (10 + step))
        shadow = d * shadow + (1 - d) * model[0].weight.detach().double()
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10_000) == 0.99
    assert torch.allclose(ema.module[0].weight.double(), shadow, atol=1e-5)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)  # buffers are copied


def test_ema_without_warmup_and_state_dict_round_trip():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.5, warmup=False)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model, step=0)
    assert torch.allclose(ema.module.weight, 0.5 * before + 0.5 * model.weight)
    other = EMA(nn.Linear(2, 2), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.module.weight, ema.module.weight)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.5)


def test_device_selection_and_errors():
    assert select_device("cpu") == torch.device("cpu")
    auto = select_device("auto")
    if torch.cuda.is_available():
        assert auto.type == "cuda"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        assert auto.type == "mps"
    else:
        assert auto.type == "cpu"
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda:0")
    if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        with pytest.raises(ValueError, match="MPS is not available"):
            select_device("mps")
    with pytest.raises(ValueError, match="device must be one of"):
        select_device("gpu")
    n = torch.get_num_threads()
    assert describe_device(torch.device("cpu")) == f"CPU ({n} thread{'' if n == 1 else 's'})"
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert describe_device("cpu") == "CPU (1 thread)"
        torch.set_num_threads(2)
        assert describe_device("cpu") == "CPU (2 threads)"
    finally:
        torch.set_num_threads(old)


def test_autocast_on_cpu_is_bf16_only_and_validates():
    lin = nn.Linear(4, 4)
    for precision in ("fp32", "fp16", "auto"):
        with autocast("cpu", precision):
            assert lin(torch.randn(2, 4)).dtype == torch.float32
    with autocast("cpu", "bf16"):  # resolve_precision decides whether a run asks for this
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast("mps", "bf16"):
        pass  # a no-op off CUDA and CPU
    assert not uses_grad_scaler("cpu", "fp16") and uses_grad_scaler("cuda", "fp16")
    assert not uses_grad_scaler("cuda", "bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast("cpu", "int8")


def test_resolve_precision_uses_bf16_only_where_the_cpu_has_it(monkeypatch):
    from ddpm_studio.engine.devices import cpu_has_native_bf16, resolve_precision

    monkeypatch.setenv("DDPM_STUDIO_CPU_BF16", "1")
    assert cpu_has_native_bf16()
    assert resolve_precision("cpu", "auto") == ("bf16", None)
    assert resolve_precision("cpu", "bf16") == ("bf16", None)
    assert resolve_precision("cpu", "fp32") == ("fp32", None)
    assert resolve_precision("cuda", "auto") == ("fp32", None)  # slower than fp32 on a GPU for these nets
    assert resolve_precision("cuda", "fp16") == ("fp16", None)
    monkeypatch.setenv("DDPM_STUDIO_CPU_BF16", "0")
    assert not cpu_has_native_bf16()
    assert resolve_precision("cpu", "auto") == ("fp32", None)  # quietly: auto asked for nothing special
    used, note = resolve_precision("cpu", "bf16")
    assert used == "fp32" and "no native bf16" in note and "10-25x slower" in note
    used, note = resolve_precision("cpu", "fp16")
    assert used == "fp32" and "fp16" in note and "not supported" in note
    used, note = resolve_precision("mps", "bf16")
    assert used == "fp32" and "Apple MPS" in note
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("cpu", "int8")


def test_describe_device_names_a_lower_precision():
    n = torch.get_num_threads()
    assert describe_device("cpu", "bf16") == f"CPU ({n} thread{'' if n == 1 else 's'}, bf16)"
    assert describe_device("cpu", "fp32") == describe_device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_autocast_on_cuda_lowers_matmul_precision():
    lin = nn.Linear(4, 4).cuda()
    with autocast("cuda", "bf16"):
        assert lin(torch.randn(2, 4, device="cuda")).dtype == torch.bfloat16
    with autocast("cuda", "fp32"):
        assert lin(torch.randn(2, 4, device="cuda")).dtype == torch.float32
