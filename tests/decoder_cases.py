"""The fused decoder (backend/decoder_triton.py) against its PyTorch twin (model.Decoder): shared by
the interpreted tests (interpreted_triton_decoder.py) and the GPU tests (test_decoder.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from backend.config import PRESETS, HashGridConfig, ModelConfig
from backend.model import Decoder

N_VIEWS = 5


def widths() -> list[ModelConfig]:
    """Every decoder shape the presets use, and a narrower one (other widths, same kernels)."""
    shapes = {(p.config.model.grid.out_dim, p.config.model.width, p.config.model.exposure_dim): p.config.model
              for p in PRESETS.values()}
    narrow = ModelConfig(grid=HashGridConfig(n_levels=4, n_features=8), width=16, exposure_dim=3)
    return list(shapes.values()) + [narrow]


def twins(cfg: ModelConfig, impl: str, device, seed: int = 0) -> tuple[Decoder, Decoder]:
    """The PyTorch decoder and `impl` with the same parameters, moved away from a fresh model's
    identity FiLM and zero exposure codes (so every path carries signal)."""
    torch.manual_seed(seed)
    ref = Decoder(cfg, N_VIEWS, impl="torch")
    for p in ref.parameters():
        p.data += 0.05 * torch.randn_like(p)
    fused = Decoder(cfg, N_VIEWS, impl=impl)
    fused.load_state_dict(ref.state_dict())
    return ref.to(device), fused.to(device)


def batch(cfg: ModelConfig, n: int, device, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(n, cfg.grid.out_dim, generator=g) * 0.05
    dirs = F.normalize(torch.randn(n, 3, generator=g), dim=-1)
    view = torch.randint(0, N_VIEWS, (n,), generator=g)
    grad = torch.randn(n, 3, generator=g)
    return feat.to(device), dirs.to(device), view.to(device), grad.to(device)


def train_step(dec: Decoder, feat, dirs, view, grad, one_code: bool = False) -> dict[str, torch.Tensor]:
    """Forward (per-ray exposure codes, or one code for all) and backward of sum(rgb * grad): the
    output and every gradient (features and each parameter)."""
    dec.zero_grad(set_to_none=True)
    feat = feat.clone().requires_grad_()
    code = dec.exposure[2] if one_code else F.embedding(view, dec.exposure)
    out = dec(feat, dirs, code, linear=True)
    (out * grad).sum().backward()
    res = {"rgb": out.detach(), "feat": feat.grad}
    res.update({k: p.grad for k, p in dec.named_parameters() if p.grad is not None})
    return res


def worst_relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per key, max |a - b| / max |a| (the error against the gradient's own scale)."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return {k: ((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-30)).item() for k in a}
