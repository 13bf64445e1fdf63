"""Fused Triton kernels of the FiLM-SIREN decoder (model.Decoder) and their launches; no autograd
(decoder_triton.py folds the decoder's parameters into the packed weights read here and makes the
kernels differentiable). The plain PyTorch twin is model.Decoder itself.

The function, per ray (row), with the per-batch constants folded into the weights (`Layout`):
    h1 = sin(x a1 + c1)   h2 = sin(h1 a2 + c2)                    feature branch, lighting FiLM folded in
    h  = exp(code es) * h2 + code et      (PER_RAY; else folded into m, cm: one exposure code)
    [ga | ba | gb | bb] = h m + cm                                view FiLM, omegas and +1 folded in
    v1 = sin(ga * (d d1 + e1) + ba)       v2 = sin(gb * (v1 d2 + e2) + bb)
    rgb = sigmoid(v2 wo^T + bo)                                   linear RGB
One program decodes BLOCK rays with every layer's weights read once into the chip (they are
small: 135 KB at the reference widths); the activations never leave it. Matrix products with a
K of at least 16 run on tensor cores (`tl.dot`, TF32 by default, "ieee" for FP32, "bf16");
the 3-wide view direction, the 4-wide exposure code and the 3-wide output are FP32 FMAs.

The backward recomputes the forward (cheaper than storing ten activations per ray) and runs the
chain rule back. Weight gradients are sums over all rays: each program loops over tiles of rays
and adds its tiles' sums into its own row of a (programs, weights) buffer (no contention, the
same order every run), which the wrapper then sums over programs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class Layout:
    """The packed float32 weight vector of a decoder of feature width D, hidden width W and
    exposure code width E: named pieces, row-major, one after the other (the order of _parts)."""
    D: int
    W: int
    E: int

    def shapes(self) -> dict[str, tuple[int, ...]]:
        D, W, E = self.D, self.W, self.E
        return {"a1": (D, W), "c1": (W,), "a2": (W, W), "c2": (W,), "es": (E, W), "et": (E, W),
                "m": (W, 4 * W), "cm": (4 * W,), "d1": (3, W), "e1": (W,), "d2": (W, W), "e2": (W,),
                "wo": (3, W), "bo": (3,)}

    @property
    def total(self) -> int:
        return sum(int(torch.Size(s).numel()) for s in self.shapes().values())

    def pack(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The pieces (by name, each of its shape) as one contiguous float32 vector (differentiable)."""
        shapes = self.shapes()
        for k, s in shapes.items():
            if tuple(parts[k].shape) != s:
                raise ValueError(f"{k} must be {s}, got {tuple(parts[k].shape)}")
        return torch.cat([parts[k].reshape(-1).float() for k in shapes])

    def unpack(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        shapes = self.shapes()
        sizes = [int(torch.Size(s).numel()) for s in shapes.values()]
        return {k: v.reshape(s) for (k, s), v in zip(shapes.items(), flat.split(sizes))}


@dataclass(frozen=True)
class Launch:
    block: int              # rays per tile (a power of two >= 16: tl.dot's smallest M)
    num_warps: int
    num_stages: int = 1     # no software pipelining: see below


# Shared memory. Each tl.dot stages its operands there, one product at a time: at most a
# (BLOCK, W) tile and a (W, W) weight block, fp32 (bf16: half), 64 KB at BLOCK 64, W 64; what
# Triton reports for the backward at D 128, W 64 (sm_90): 80 KB TF32, 128 KB FP32, 36 KB BF16;
# the forward 96 / 96 / 64 KB at BLOCK 128. num_stages above 1 would software-pipeline the
# backward's loop over tiles: every weight block it reads, loop-invariant, held in shared
# memory several times over (700-900 KB, more than any GPU has). test_decoder checks the sizes.
FWD_LAUNCH = Launch(128, 8)
BWD_LAUNCH = Launch(64, 8)  # the backward holds ~10 activation tiles: smaller tiles, fewer spills
PROGRAMS_PER_SM = 2         # backward programs (each loops over tiles) per streaming multiprocessor
PRECISIONS = ("tf32", "ieee", "bf16")


def supports(D: int, W: int) -> bool:
    """The kernels' tl.dot shapes: feature and hidden widths powers of two, from 16 (tensor-core
    minimum) to what fits on the chip."""
    return all(n & (n - 1) == 0 for n in (D, W)) and 16 <= D <= 256 and 16 <= W <= 128


# --- building blocks ----------------------------------------------------------------------------

@triton.jit
def _parts(p, D: tl.constexpr, W: tl.constexpr, E: tl.constexpr):
    """Pointers to the pieces of a packed vector (Layout.shapes' order)."""
    a1 = p
    c1 = a1 + D * W
    a2 = c1 + W
    c2 = a2 + W * W
    es = c2 + W
    et = es + E * W
    m = et + E * W
    cm = m + 4 * W * W
    d1 = cm + 4 * W
    e1 = d1 + 3 * W
    d2 = e1 + W
    e2 = d2 + W * W
    wo = e2 + W
    bo = wo + 3 * W
    return a1, c1, a2, c2, es, et, m, cm, d1, e1, d2, e2, wo, bo


@triton.jit
def _mat(p, R: tl.constexpr, C: tl.constexpr, LD: tl.constexpr):
    """(R, C) block of a row-major matrix with LD columns."""
    return tl.load(p + tl.arange(0, R)[:, None] * LD + tl.arange(0, C)[None, :])


@triton.jit
def _vec(p, C: tl.constexpr):
    return tl.load(p + tl.arange(0, C))


@triton.jit
def _add_mat(p, v, R: tl.constexpr, C: tl.constexpr, LD: tl.constexpr):
    """+= v into the program's own gradient row. Atomic although no other program writes there:
    a load-add-store would need every thread to see the previous tile's stores of the others
    (elements a layout replicates over threads are stored by one). Relaxed, result unused:
    fire-and-forget reductions in L2, uncontended, in program order per element."""
    tl.atomic_add(p + tl.arange(0, R)[:, None] * LD + tl.arange(0, C)[None, :], v, sem="relaxed")


@triton.jit
def _add_vec(p, v, C: tl.constexpr):
    tl.atomic_add(p + tl.arange(0, C), v, sem="relaxed")


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    """a @ b on tensor cores, FP32 accumulation; PREC: tf32, ieee (FP32) or bf16 inputs."""
    if PREC == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _col(ptr, rows, mask, stride, k):
    """Column k of a row-major (N, stride) float32 input, one value per ray (0 beyond N)."""
    return tl.load(ptr + rows * stride + k, mask=mask, other=0.0)


@triton.jit
def _features(x, a1, c1, a2, c2, D: tl.constexpr, W: tl.constexpr, PREC: tl.constexpr):
    """Feature branch: pre-activations and activations of both layers, (BLOCK, W) each."""
    z1 = _dot(x, _mat(a1, D, W, W), PREC) + _vec(c1, W)[None, :]
    h1 = tl.sin(z1)
    z2 = _dot(h1, _mat(a2, W, W, W), PREC) + _vec(c2, W)[None, :]
    return z1, h1, z2, tl.sin(z2)


@triton.jit
def _exposure(code_ptr, code_stride, rows, mask, es, et, W: tl.constexpr, E: tl.constexpr):
    """Per-ray exposure affine (scale s = exp(code es), shift t = code et), (BLOCK, W) each."""
    ls = tl.zeros((rows.shape[0], W), tl.float32)
    t = tl.zeros((rows.shape[0], W), tl.float32)
    for k in tl.static_range(E):
        ck = _col(code_ptr, rows, mask, code_stride, k)[:, None]
        ls += ck * _vec(es + k * W, W)[None, :]
        t += ck * _vec(et + k * W, W)[None, :]
    return tl.exp(ls), t


@triton.jit
def _mod(h, m, cm, j: tl.constexpr, W: tl.constexpr, PREC: tl.constexpr):
    """Block j of the view branch's FiLM: ga, ba, gb, bb for j = 0..3."""
    return _dot(h, _mat(m + j * W, W, W, 4 * W), PREC) + _vec(cm + j * W, W)[None, :]


@triton.jit
def _view_in(dirs_ptr, rows, mask, d1, e1, W: tl.constexpr):
    """d d1 + e1 for unit view directions d (N, 3): three FMAs per element."""
    u = tl.zeros((rows.shape[0], W), tl.float32) + _vec(e1, W)[None, :]
    for k in tl.static_range(3):
        u += _col(dirs_ptr, rows, mask, 3, k)[:, None] * _vec(d1 + k * W, W)[None, :]
    return u


@triton.jit
def _logit(v2, wo, bo, k: tl.constexpr, W: tl.constexpr):
    return tl.sum(v2 * _vec(wo + k * W, W)[None, :], axis=1) + tl.load(bo + k)


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


# --- kernels ------------------------------------------------------------------------------------

@triton.jit
def _forward_kernel(feat_ptr, dirs_ptr, code_ptr, code_stride, w_ptr, out_ptr, N,
                    D: tl.constexpr, W: tl.constexpr, E: tl.constexpr, BLOCK: tl.constexpr,
                    PER_RAY: tl.constexpr, PREC: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = rows < N
    a1, c1, a2, c2, es, et, m, cm, d1, e1, d2, e2, wo, bo = _parts(w_ptr, D, W, E)
    x = tl.load(feat_ptr + rows[:, None] * D + tl.arange(0, D)[None, :], mask=mask[:, None], other=0.0)
    _, _, _, h = _features(x, a1, c1, a2, c2, D, W, PREC)
    if PER_RAY:
        s, t = _exposure(code_ptr, code_stride, rows, mask, es, et, W, E)
        h = s * h + t
    v1 = tl.sin(_mod(h, m, cm, 0, W, PREC) * _view_in(dirs_ptr, rows, mask, d1, e1, W) + _mod(h, m, cm, 1, W, PREC))
    u2 = _dot(v1, _mat(d2, W, W, W), PREC) + _vec(e2, W)[None, :]
    v2 = tl.sin(_mod(h, m, cm, 2, W, PREC) * u2 + _mod(h, m, cm, 3, W, PREC))
    for k in tl.static_range(3):
        tl.store(out_ptr + rows * 3 + k, _sigmoid(_logit(v2, wo, bo, k, W)), mask=mask)


@triton.jit
def _backward_kernel(feat_ptr, dirs_ptr, code_ptr, code_stride, w_ptr, gout_ptr, gfeat_ptr, gcode_ptr,
                     gw_ptr, N, n_tiles, TOTAL,
                     D: tl.constexpr, W: tl.constexpr, E: tl.constexpr, BLOCK: tl.constexpr,
                     PER_RAY: tl.constexpr, NEED_FEAT: tl.constexpr, NEED_CODE: tl.constexpr,
                     PREC: tl.constexpr):
    """Gradients of sum(forward * gout): w.r.t. the features (N, D) and codes (N, E) per ray, and
    w.r.t. the packed weights summed over this program's tiles into row program_id of gw."""
    pid = tl.program_id(0)
    a1, c1, a2, c2, es, et, m, cm, d1, e1, d2, e2, wo, bo = _parts(w_ptr, D, W, E)
    ga1, gc1, ga2, gc2, ges, get, gm, gcm, gd1, ge1, gd2, ge2, gwo, gbo = _parts(
        gw_ptr + pid.to(tl.int64) * TOTAL, D, W, E)
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        rows = (tile * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)   # tile * BLOCK < N < 2^31
        mask = rows < N
        # forward, again
        x = tl.load(feat_ptr + rows[:, None] * D + tl.arange(0, D)[None, :], mask=mask[:, None], other=0.0)
        z1, h1, z2, h2 = _features(x, a1, c1, a2, c2, D, W, PREC)
        if PER_RAY:
            s, t = _exposure(code_ptr, code_stride, rows, mask, es, et, W, E)
            h = s * h2 + t
        else:
            h = h2
        ga = _mod(h, m, cm, 0, W, PREC)
        gb = _mod(h, m, cm, 2, W, PREC)
        u1 = _view_in(dirs_ptr, rows, mask, d1, e1, W)
        p1 = ga * u1 + _mod(h, m, cm, 1, W, PREC)
        v1 = tl.sin(p1)
        u2 = _dot(v1, _mat(d2, W, W, W), PREC) + _vec(e2, W)[None, :]
        p2 = gb * u2 + _mod(h, m, cm, 3, W, PREC)
        v2 = tl.sin(p2)
        # output layer: sigmoid'(z) = y (1 - y); rays beyond N have gout 0, so add nothing
        dv2 = tl.zeros((BLOCK, W), tl.float32)
        for k in tl.static_range(3):
            y = _sigmoid(_logit(v2, wo, bo, k, W))
            dz = tl.load(gout_ptr + rows * 3 + k, mask=mask, other=0.0) * y * (1.0 - y)
            dv2 += dz[:, None] * _vec(wo + k * W, W)[None, :]
            _add_vec(gwo + k * W, tl.sum(v2 * dz[:, None], axis=0), W)
            tl.atomic_add(gbo + k, tl.sum(dz, axis=0), sem="relaxed")
        # second view layer
        dp2 = dv2 * tl.cos(p2)
        du2 = dp2 * gb
        _add_mat(gd2, _dot(tl.trans(v1), du2, PREC), W, W, W)
        _add_vec(ge2, tl.sum(du2, axis=0), W)
        dv1 = _dot(du2, tl.trans(_mat(d2, W, W, W)), PREC)
        # first view layer (direction: fixed input, no gradient)
        dp1 = dv1 * tl.cos(p1)
        du1 = dp1 * ga
        for k in tl.static_range(3):
            dk = _col(dirs_ptr, rows, mask, 3, k)
            _add_vec(gd1 + k * W, tl.sum(dk[:, None] * du1, axis=0), W)
        _add_vec(ge1, tl.sum(du1, axis=0), W)
        # view FiLM: d[ga | ba | gb | bb] = [dp1 u1 | dp1 | dp2 u2 | dp2]
        dga = dp1 * u1
        dgb = dp2 * u2
        ht = tl.trans(h)
        _add_mat(gm, _dot(ht, dga, PREC), W, W, 4 * W)
        _add_mat(gm + W, _dot(ht, dp1, PREC), W, W, 4 * W)
        _add_mat(gm + 2 * W, _dot(ht, dgb, PREC), W, W, 4 * W)
        _add_mat(gm + 3 * W, _dot(ht, dp2, PREC), W, W, 4 * W)
        _add_vec(gcm, tl.sum(dga, axis=0), W)
        _add_vec(gcm + W, tl.sum(dp1, axis=0), W)
        _add_vec(gcm + 2 * W, tl.sum(dgb, axis=0), W)
        _add_vec(gcm + 3 * W, tl.sum(dp2, axis=0), W)
        dh = _dot(dga, tl.trans(_mat(m, W, W, 4 * W)), PREC)
        dh += _dot(dp1, tl.trans(_mat(m + W, W, W, 4 * W)), PREC)
        dh += _dot(dgb, tl.trans(_mat(m + 2 * W, W, W, 4 * W)), PREC)
        dh += _dot(dp2, tl.trans(_mat(m + 3 * W, W, W, 4 * W)), PREC)
        # exposure: h = exp(ls) h2 + t, d ls = dh h2 s, d t = dh
        if PER_RAY:
            dls = dh * h2 * s
            dh2 = dh * s
            for k in tl.static_range(E):
                ck = _col(code_ptr, rows, mask, code_stride, k)[:, None]
                _add_vec(ges + k * W, tl.sum(ck * dls, axis=0), W)
                _add_vec(get + k * W, tl.sum(ck * dh, axis=0), W)
                if NEED_CODE:
                    gk = tl.sum(dls * _vec(es + k * W, W)[None, :], axis=1) + \
                        tl.sum(dh * _vec(et + k * W, W)[None, :], axis=1)
                    tl.store(gcode_ptr + rows * E + k, gk, mask=mask)
        else:
            dh2 = dh
        # feature branch
        dz2 = dh2 * tl.cos(z2)
        _add_mat(ga2, _dot(tl.trans(h1), dz2, PREC), W, W, W)
        _add_vec(gc2, tl.sum(dz2, axis=0), W)
        dz1 = _dot(dz2, tl.trans(_mat(a2, W, W, W)), PREC) * tl.cos(z1)
        _add_mat(ga1, _dot(tl.trans(x), dz1, PREC), D, W, W)
        _add_vec(gc1, tl.sum(dz1, axis=0), W)
        if NEED_FEAT:
            dx = _dot(dz1, tl.trans(_mat(a1, D, W, W)), PREC)
            tl.store(gfeat_ptr + rows[:, None] * D + tl.arange(0, D)[None, :], dx, mask=mask[:, None])


# --- launches -----------------------------------------------------------------------------------

def _check(feat: torch.Tensor, dirs: torch.Tensor, code: torch.Tensor, w: torch.Tensor, lay: Layout,
           precision: str) -> None:
    n = feat.shape[0]
    if not supports(lay.D, lay.W):
        raise ValueError(f"widths D={lay.D}, W={lay.W}: the fused decoder needs powers of two (D 16..256, W 16..128)")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if tuple(feat.shape) != (n, lay.D) or tuple(dirs.shape) != (n, 3) or w.shape != (lay.total,):
        raise ValueError(f"shapes: feat {tuple(feat.shape)}, dirs {tuple(dirs.shape)}, weights {tuple(w.shape)}")
    if code.dim() != 2 or code.shape[1] != lay.E or code.stride(1) != 1 or code.shape[0] not in (n, 1):
        raise ValueError(f"code must be (N or 1, {lay.E}) with unit column stride, got {tuple(code.shape)}")
    for name, t in (("feat", feat), ("dirs", dirs), ("code", code), ("weights", w)):
        if t.dtype != torch.float32:
            raise ValueError(f"{name} must be float32, got {t.dtype}")
    if not (feat.is_contiguous() and dirs.is_contiguous() and w.is_contiguous()):
        raise ValueError("feat, dirs and the weights must be contiguous")


def _code_stride(code: torch.Tensor) -> int:
    return 0 if code.shape[0] == 1 else code.stride(0)


def forward(feat: torch.Tensor, dirs: torch.Tensor, code: torch.Tensor | None, w: torch.Tensor, lay: Layout,
            precision: str = "tf32", launch: Launch | None = None) -> torch.Tensor:
    """Linear RGB (N, 3) of rays with features feat (N, D), unit directions dirs (N, 3) and
    exposure codes code (N, E) (one code for all: (1, E)), or with code None the exposure already
    folded into w's view FiLM (Layout; es, et unused). No autograd."""
    n = feat.shape[0]
    launch = launch or FWD_LAUNCH           # read at the call: benchmarks try others
    per_ray = code is not None
    code = code if per_ray else w[:lay.E].view(1, lay.E)     # not read: a pointer to pass
    _check(feat, dirs, code, w, lay, precision)
    out = torch.empty(n, 3, dtype=torch.float32, device=feat.device)
    if n == 0:
        return out
    _forward_kernel[(triton.cdiv(n, launch.block),)](
        feat, dirs, code, _code_stride(code), w, out, n, D=lay.D, W=lay.W, E=lay.E, BLOCK=launch.block,
        PER_RAY=per_ray, PREC=precision, num_warps=launch.num_warps, num_stages=launch.num_stages)
    return out


def _programs(n_tiles: int, device: torch.device) -> int:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(n_tiles, PROGRAMS_PER_SM * sms))
    return max(1, min(n_tiles, 3))      # the interpreter: a few programs, several tiles each


def backward(feat: torch.Tensor, dirs: torch.Tensor, code: torch.Tensor | None, w: torch.Tensor,
             grad_out: torch.Tensor, lay: Layout, precision: str = "tf32", need_feat: bool = True,
             need_code: bool = True, launch: Launch | None = None):
    """Gradients of sum(forward(...) * grad_out): (feat (N, D) or None, code (N, E) or None,
    weights (Layout.total,)). With one code (1, E) its gradient is per ray all the same: the
    caller sums it."""
    n = feat.shape[0]
    launch = launch or BWD_LAUNCH
    per_ray = code is not None
    code = code if per_ray else w[:lay.E].view(1, lay.E)     # not read: a pointer to pass
    _check(feat, dirs, code, w, lay, precision)
    dev = feat.device
    gfeat = torch.empty(n, lay.D, dtype=torch.float32, device=dev) if need_feat else None
    gcode = torch.empty(n, lay.E, dtype=torch.float32, device=dev) if need_code and per_ray else None
    n_tiles = triton.cdiv(n, launch.block)
    if n == 0:
        return gfeat, gcode, torch.zeros(lay.total, dtype=torch.float32, device=dev)
    progs = _programs(n_tiles, dev)
    gw = torch.zeros(progs, lay.total, dtype=torch.float32, device=dev)
    dummy = gw
    _backward_kernel[(progs,)](
        feat, dirs, code, _code_stride(code), w, grad_out.float().contiguous(),
        gfeat if need_feat else dummy, gcode if gcode is not None else dummy, gw, n, n_tiles, lay.total,
        D=lay.D, W=lay.W, E=lay.E, BLOCK=launch.block, PER_RAY=per_ray, NEED_FEAT=need_feat,
        NEED_CODE=gcode is not None, PREC=precision, num_warps=launch.num_warps,
        num_stages=launch.num_stages)
    return gfeat, gcode, gw.sum(0)
