"""`TcnnEncoder`: tiny-cuda-nn's HashGrid on our parameter tensor (same layout, see layout.py): optional.

Used only when asked for (--grid-backend tcnn) and after a self-check in a child process: some
builds crash in their first forward (seen: tinycudann 2.0 for sm_90 with CUDA 13 and torch 2.11),
and a crash there must not take the caller down. Pixels go per point, then through the generic
weights (encoder.py); it does not split levels (level-parallel training runs data parallel).
"""
from __future__ import annotations

import subprocess
import sys

import torch

from ..config import HashGridConfig
from ..errors import DeviceError
from .encoder import Encoder

SELF_CHECK = r"""
import torch, tinycudann as tcnn
enc = tcnn.Encoding(3, {"otype": "HashGrid", "n_levels": 2, "n_features_per_level": 2,
                        "log2_hashmap_size": 12, "base_resolution": 4, "per_level_scale": 2.0})
x = torch.rand(64, 3, device="cuda")
y = enc(x)
torch.cuda.synchronize()
assert torch.isfinite(y).all()
print("ok")
"""

_ENCODERS: dict = {}


def self_check(code: str = SELF_CHECK, timeout: float = 120) -> tuple[bool, str]:
    """Run `code` in a child interpreter: (passed, message)."""
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "timed out"
    if p.returncode == 0 and p.stdout.strip().endswith("ok"):
        return True, "self-check passed"
    tail = (p.stderr.strip().splitlines() or [f"exit code {p.returncode}"])[-1]
    return False, f"self-check failed (exit code {p.returncode}): {tail}"


def encode_tcnn(x: torch.Tensor, table: torch.Tensor, cfg: HashGridConfig) -> torch.Tensor:
    """Normalised points x (N, 3) -> (N, L*F) through tiny-cuda-nn, differentiable w.r.t. table."""
    import tinycudann as tcnn
    from tinycudann.modules import _module_function
    key = (cfg, x.device)
    if key not in _ENCODERS:
        _ENCODERS[key] = tcnn.Encoding(3, {
            "otype": "HashGrid", "n_levels": cfg.n_levels, "n_features_per_level": cfg.n_features,
            "log2_hashmap_size": cfg.log2_table, "base_resolution": cfg.base_res,
            "per_level_scale": cfg.per_level_scale,
            "interpolation": "Smoothstep" if cfg.smoothstep else "Linear"}, dtype=torch.float32)
    enc = _ENCODERS[key]
    if enc.params.numel() != table.numel():
        raise RuntimeError(f"tinycudann expects {enc.params.numel()} parameters, ours has {table.numel()}")
    return _module_function.apply(enc.native_tcnn_module, x.contiguous(), table.reshape(-1), enc.loss_scale)


class TcnnEncoder(Encoder):

    @classmethod
    def check(cls) -> None:
        ok, msg = self_check()
        if not ok:
            raise DeviceError(f"--grid-backend tcnn: tinycudann is not usable here ({msg}); "
                              "use --grid-backend auto.")

    def points(self, x: torch.Tensor, table: torch.Tensor, coherent: bool = False) -> torch.Tensor:
        return encode_tcnn(x, table, self.cfg)
