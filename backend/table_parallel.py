"""Level-parallel training of the hash table: the processes of a group split the grid's levels.

Why. In data-parallel training every process holds and updates the whole table (1.41 GB at the
reference settings). Each step it all-reduces the table's 1.41 GB gradient (several ms over
NVLink, and none of it overlaps the backward: the table's gradient is complete only when the
grid's backward, the last kernel of the step, ends), then runs Adam and zeroes a gradient over
all of it: costs that stay the same however many processes share the batch.

How. The G processes of a group own disjoint sets of levels (assign_levels: the expensive hashed
levels dealt out first, then the dense ones where the load is lightest). Each process still loads
and decodes only its own share of the batch. Per step:
  1. all_gather of the batch's points (normalised positions, sub-sample weights, footprints) over
     the group: every process has the group's whole batch (20 bytes per sub-sample);
  2. every process encodes all of them at its own levels only (HashGrid.encode_levels);
  3. all_to_all: each process receives its own rays' features of every level and decodes them;
  4. backward: all_to_all of the feature gradients back to the levels' owners, each owner runs the
     grid backward of its levels over the whole batch: its levels' gradient is complete there,
     nothing to reduce (with several groups, D = world / G: one all_reduce of that slice over the D
     processes owning the same levels);
  5. Adam on the own levels only (the decoder, small, is reduced over all processes and updated
     everywhere as before).
Per process and step this moves ~2 x batch x 512 B x (G-1)/G^2 of features and gradients plus the
points, instead of 2 x 1.41 GB x (G-1)/G, and Adam, gradient zeroing and the regulariser cover 1/G
of the table. The function computed is the same as on one process, level by level (float sums of
the table's gradient in another order, as with any number of processes).

Parameters: the model keeps its full table; the own levels are Parameters sharing its storage
(Adam updates them in place). Checkpoints keep the one-process layout: before a save the owners
send their levels (rows and Adam moments) to rank 0 (optimizer_state), and a resume slices
them again (load_optimizer_state), so runs resume with any number of processes in any mode.

`XSCALE_TABLE_PARALLEL`: auto (default: groups of up to MAX_AUTO_GROUP processes of one machine),
off (plain data parallel), or a group size G (dividing the number of processes).
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
from torch import nn

from . import distributed
from .config import HashGridConfig, OptimConfig
from .encoding import Level, Weights
from .errors import InputError
from .grad_reduce import others, reduce_flat
from .stepprof import NO_PROFILE

# torch 2.13 renamed all_gather_into_tensor (deprecated there); older versions have only the old name.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

TP_ENV = "XSCALE_TABLE_PARALLEL"
MAX_AUTO_GROUP = 4      # more: too few hashed levels (10 at the reference settings) per process
DENSE_COST = 0.3        # work of a dense (cache-resident) level relative to a hashed one


def group_size(setting: str, world: int, local_world: int, n_levels: int) -> int:
    """Processes per level group (1: plain data parallel)."""
    setting = (setting or "auto").strip().lower()
    if world <= 1 or setting in ("off", "0", "1", "none"):
        return 1
    if setting == "auto":
        cap = min(MAX_AUTO_GROUP, n_levels, local_world)
        return max(g for g in range(1, cap + 1) if local_world % g == 0 and world % g == 0)
    try:
        g = int(setting)
    except ValueError:
        raise InputError(f"{TP_ENV}={setting}: use auto, off or a number of processes per group.") from None
    if g < 1 or world % g or g > n_levels:
        raise InputError(f"{TP_ENV}={g}: the group size must divide the {world} processes and be at most "
                         f"the {n_levels} levels of the grid.")
    return g


def assign_levels(lay: list[Level], G: int) -> list[list[int]]:
    """Levels of each of G processes (each list increasing), balancing the estimated work: the
    hashed levels in turn to the least loaded process, then the dense ones."""
    load, n, own = [0.0] * G, [0] * G, [[] for _ in range(G)]
    order = [i for i, lv in enumerate(lay) if lv.hashed] + [i for i, lv in enumerate(lay) if not lv.hashed]
    for i in order:
        q = min(range(G), key=lambda k: (load[k], n[k], k))
        own[q].append(i)
        load[q] += 1.0 if lay[i].hashed else DENSE_COST
        n[q] += 1
    return [sorted(o) for o in own]


class LevelParallel:
    """This process's part of level-parallel training (see the module docstring): a training
    strategy (train_strategy.Strategy)."""

    def __init__(self, model, rank: int, world: int, G: int, batch: int, device: torch.device):
        self.model, self.device = model, device
        self.cfg: HashGridConfig = model.grid.cfg
        self.G, self.D = G, world // G
        self.mode = f"level parallel: {self.D} group(s) of {G} processes"
        self.rank, self.member, self.block = rank, rank % G, rank // G
        self.lay = model.grid.levels
        self.levels_of = assign_levels(self.lay, G)
        self.owner = {lv: q for q, ls in enumerate(self.levels_of) for lv in ls}
        self.own = self.levels_of[self.member]
        self.own_levels = [self.lay[i] for i in self.own]
        self.L, self.F = self.cfg.n_levels, self.cfg.n_features
        self.P = -(-batch // world)          # rows per process, padded: the largest share
        # Process groups: the G processes of each block (levels split), the D processes holding the
        # same levels (data parallel between blocks). Every process creates every group, in order.
        self.group = self.dp_group = None
        for b in range(self.D):
            g = dist.new_group([b * G + m for m in range(G)]) if self.D > 1 else None
            if b == self.block:
                self.group = g
        if self.D > 1:
            for m in range(G):
                g = dist.new_group([m + k * G for k in range(self.D)])
                if m == self.member:
                    self.dp_group = g
        # The exchanges (all_to_all with uneven splits): process q's block holds its levels'
        # columns for P rays. "Member order" lists the levels process by process.
        member_order = [lv for ls in self.levels_of for lv in ls]
        self.widths = [len(ls) for ls in self.levels_of]
        self.splits = [self.P * w * self.F for w in self.widths]       # elements of each process's block
        self.own_splits = [self.P * len(self.own) * self.F] * G
        self.to_member_order = torch.tensor(member_order, dtype=torch.int64, device=device)
        self.to_level_order = torch.tensor([member_order.index(lv) for lv in range(self.L)],
                                           dtype=torch.int64, device=device)
        # The own levels as Parameters sharing the model's table storage (Adam updates them in place).
        self.params = [nn.Parameter(model.grid.table.data[lv.rows]) for lv in self.own_levels]
        self.others: list[nn.Parameter] = []       # the parameters besides the table (all processes)
        self.grad: torch.Tensor | None = None      # the own levels' gradient of the last backward
        self.prof = NO_PROFILE

    # --- optimiser ---------------------------------------------------------------------------

    def param_groups(self, groups: list[dict]) -> list[dict]:
        """Manifold.param_groups' groups with the table replaced by the own levels."""
        self.others = others(groups)
        return [dict(g, params=list(self.params)) if g.get("name") == "grid" else g for g in groups]

    def start(self) -> None:
        distributed.broadcast_module(self.model)

    def backward(self, loss: torch.Tensor, prof) -> None:
        loss.backward()     # its parts are marked in _LevelFeatures.backward

    def reduce(self, stats: torch.Tensor) -> torch.Tensor:
        """The own levels' gradient is complete; the other parameters' and `stats` are summed."""
        self.assign_grads()
        return reduce_flat(self.others, stats)

    def assign_grads(self) -> None:
        """The own levels' gradients from the last backward (zeros when there was none)."""
        g = self.grad if self.grad is not None else torch.zeros(
            sum(lv.size for lv in self.own_levels), self.F, device=self.device)
        o = 0
        for p, lv in zip(self.params, self.own_levels):
            p.grad = g[o:o + lv.size]
            o += lv.size
        self.grad = None

    def regularise(self, optim: OptimConfig) -> None:
        """The model's regularisers, the grid decay on the own levels only."""
        self.model.add_regulariser_grads(dataclasses.replace(optim, grid_decay=0.0))
        self.model.grid.add_decay_grads(optim.grid_decay, self.params)

    # --- the step's features -----------------------------------------------------------------

    def features(self, xyz: torch.Tensor, mask: torch.Tensor, footprint: torch.Tensor | None,
                 prof=NO_PROFILE) -> torch.Tensor:
        """Per-ray features (n, L*F) of this process's rays, as Manifold.features computes them."""
        self.prof = prof
        w, lf = self.model.sub_sample_weights(xyz, mask, footprint)
        x = self.model.grid.normalise(xyz.float())
        self.prof.mark("points")
        return _LevelFeatures.apply(self.model.grid.table, x, w, lf, self)

    def _pad(self, t: torch.Tensor) -> torch.Tensor:
        n = t.shape[0]
        if n == self.P:
            return t.contiguous()
        out = t.new_zeros((self.P, *t.shape[1:]))
        out[:n] = t
        return out

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        out = t.new_empty((self.G * self.P, *t.shape[1:]))
        _all_gather(out, self._pad(t), group=self.group)
        return out

    def weights(self, W: torch.Tensor, LF: torch.Tensor | None) -> Weights:
        """The grid's pixel weights of gathered sub-sample weights and log2 footprints."""
        cfg = self.model.cfg
        return Weights(w=W, log2_footprint=LF, fade=cfg.level_fade, bias=cfg.level_bias)

    def exchange_features(self, own: torch.Tensor) -> torch.Tensor:
        """own (G*P, L_own*F), the group's rays in process order -> this process's rays' features
        of every level (P, L*F)."""
        P, F = self.P, self.F
        recv = own.new_empty(P * self.L * F)
        dist.all_to_all_single(recv, own.contiguous().reshape(-1), output_split_sizes=self.splits,
                               input_split_sizes=self.own_splits, group=self.group)
        blocks = [b.view(P, w, F) for b, w in zip(recv.split(self.splits), self.widths)]
        return torch.cat(blocks, 1).index_select(1, self.to_level_order).reshape(P, self.L * F)

    def exchange_grads(self, grad: torch.Tensor) -> torch.Tensor:
        """grad (n, L*F) of this process's rays -> the own levels' gradients of the group's whole
        batch (G*P, L_own*F)."""
        P, F, L = self.P, self.F, self.L
        n = grad.shape[0]
        g = grad.reshape(n, L, F).index_select(1, self.to_member_order)
        if n < P:
            g = torch.cat([g, g.new_zeros(P - n, L, F)])
        send = torch.cat([b.reshape(-1) for b in g.split(self.widths, 1)])
        recv = send.new_empty(self.G * P * len(self.own) * F)
        dist.all_to_all_single(recv, send, output_split_sizes=self.own_splits, input_split_sizes=self.splits,
                               group=self.group)
        return recv.view(self.G * P, len(self.own) * F)

    # --- checkpoints -------------------------------------------------------------------------

    def optimizer_state(self, opt: torch.optim.Optimizer) -> dict | None:
        """Collective over the processes of block 0: rank 0 receives every level it does not own
        (table rows and Adam moments) and returns the optimiser state in the one-process layout
        (and its model's table is then complete); None elsewhere."""
        if self.block != 0:
            return None
        sd = opt.state_dict()
        m = len(self.params)
        main = self.member == 0
        table = self.model.grid.table.data
        st = [sd["state"].get(i) for i in range(m)]
        keys = [k for k, v in (st[0] or {}).items() if torch.is_tensor(v) and v.shape == self.params[0].shape]
        full = {k: torch.zeros_like(table) for k in keys} if main else {}
        for i, lv in enumerate(self.lay):
            q, rows = self.owner[i], lv.rows
            if q == self.member:
                j = self.own.index(i)
                if main:
                    for k in keys:
                        full[k][rows] = st[j][k]
                else:
                    for t in [table[rows]] + [st[j][k] for k in keys]:
                        dist.send(t.contiguous(), dst=0)
            elif main:
                for t in [table[rows]] + [full[k][rows] for k in keys]:
                    buf = torch.empty_like(t)
                    dist.recv(buf, src=q)
                    t.copy_(buf)
        if not main:
            return None
        out = {"state": {}, "param_groups": []}
        if st[0] is not None:
            out["state"][0] = {k: (full[k] if k in full else v.clone() if torch.is_tensor(v) else v)
                               for k, v in st[0].items()}
        for k, v in sd["state"].items():
            if k >= m:
                out["state"][k - m + 1] = v
        for g in sd["param_groups"]:
            ps = [0] if g.get("name") == "grid" else [p - m + 1 for p in g["params"]]
            out["param_groups"].append(dict(g, params=ps))
        return out

    def load_optimizer_state(self, opt: torch.optim.Optimizer, full: dict) -> None:
        """Resume from an optimiser state in the one-process layout (this process's levels)."""
        m = len(self.params)
        st = full["state"]
        out = {"state": {}, "param_groups": []}
        t0 = st.get(0)
        if t0 is not None:
            shape = (sum(lv.size for lv in self.lay), self.F)
            for j, lv in enumerate(self.own_levels):
                out["state"][j] = {k: (v[lv.rows].clone() if torch.is_tensor(v) and tuple(v.shape) == shape
                                       else v.clone() if torch.is_tensor(v) else v) for k, v in t0.items()}
        for k, v in st.items():
            if k >= 1:
                out["state"][k - 1 + m] = v
        for g in full["param_groups"]:
            ps = list(range(m)) if g.get("name") == "grid" else [p - 1 + m for p in g["params"]]
            out["param_groups"].append(dict(g, params=ps))
        opt.load_state_dict(out)


class _LevelFeatures(torch.autograd.Function):
    """The level-parallel features of this process's rays (LevelParallel.features); the backward
    leaves the own levels' gradient in `lp.grad` (the table itself gets none)."""

    @staticmethod
    def forward(ctx, table, x, w, lf, lp: LevelParallel):
        n = x.shape[0]
        X, W = lp._gather(x), lp._gather(w)
        LF = lp._gather(lf) if lf is not None else None
        lp.prof.mark("exchange_points")
        own = lp.model.grid.encode_levels(X, lp.weights(W, LF), lp.own)
        lp.prof.mark("grid_fwd")
        out = lp.exchange_features(own)[:n]
        lp.prof.mark("exchange_features")
        ctx.lp = lp
        ctx.save_for_backward(X, W, LF)
        return out

    @staticmethod
    def backward(ctx, grad):
        lp = ctx.lp
        lp.prof.mark("decoder_bwd")
        X, W, LF = ctx.saved_tensors
        gown = lp.exchange_grads(grad.float())
        lp.prof.mark("exchange_grads")
        g = lp.model.grid.encode_levels_backward(X, lp.weights(W, LF), lp.own, gown)
        if lp.dp_group is not None:
            dist.all_reduce(g, group=lp.dp_group)
        lp.grad = g
        lp.prof.mark("grid_bwd")
        return None, None, None, None, None


def setting() -> str:
    return os.environ.get(TP_ENV, "auto")
