import torch

from backend.config import HashGridConfig, ModelConfig
from backend.model import Manifold


def _model(dtype):
    torch.manual_seed(0)
    m = Manifold(ModelConfig(grid=HashGridConfig(log2_table=12)), [0, 0, 0], [1, 1, 1], n_views=5).to(dtype)
    for p in m.decoder.parameters():      # away from the identity FiLM / zero exposure of a fresh model
        p.data += 0.05 * torch.randn_like(p)
    return m


def test_folded_decoder_is_the_same_function():
    """Decoder.infer (constants folded into the weights, used for rendering) computes forward:
    to float64 rounding in float64, and well inside an 8-bit level in float32."""
    m = _model(torch.float64)
    feat = torch.randn(500, m.cfg.grid.out_dim, dtype=torch.float64) * 0.05
    d = torch.nn.functional.normalize(torch.randn(500, 3, dtype=torch.float64), dim=-1)
    for which in ("mean", 3):
        code = m.exposure_code(None, which)
        ref = m.decoder(feat, d, code)
        assert (m.decoder.infer(feat, d, code) - ref).abs().max().item() < 1e-10
        assert (m.decoder.infer(feat, d, code, linear=True) - m.decoder(feat, d, code, linear=True)).abs().max() < 1e-10
    m = m.float()
    ref = m.decoder(feat.float(), d.float(), m.exposure_code(None, "mean"))
    out = m.decoder.infer(feat.float(), d.float(), m.exposure_code(None, "mean"))
    assert (out - ref).abs().max().item() < 1e-4


def test_rendering_uses_the_folded_decoder_only_without_gradients():
    m = _model(torch.float32)
    xyz, mask = torch.rand(64, 4, 3), torch.rand(64, 4) > 0.3
    d = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    with torch.no_grad():
        fast = m(xyz, mask, d)
    slow = m(xyz, mask, d)                  # grad enabled: the training path
    assert slow.requires_grad and not fast.requires_grad
    assert (fast - slow).abs().max().item() < 1e-4
    views = torch.tensor([0, 1] * 32)
    with torch.no_grad():                   # per-row exposure codes (training batches) keep forward
        torch.testing.assert_close(m(xyz, mask, d, view=views), m.decoder(m.features(xyz, mask), d, m.exposure_code(views)))
