"""Every setting of the backend in one place: the nested configs, the named presets, and the
options that the command line and the Blender add-on expose, with their defaults and limits.

Standard library only: the Blender add-on (no torch, no numpy) builds its properties from the
same `Option`s through `backend_link`, so a default or a limit is changed here and nowhere else.

The configs nest by name, as RUN/train.json stores them:
    TrainConfig                       steps, seed, checkpoint interval
      .optim: OptimConfig             rays per step, learning rates and their schedule
      .schedule: ScheduleConfig       how long to train when steps are not set (from the ray cache)
      .model: ModelConfig             decoder widths and SIREN frequencies
        .grid: HashGridConfig         multi-resolution hash encoding
The ray cache's settings (supersampling, held-out split, image level) are the CACHE_OPTIONS below
and live in RUN/config.json (read through runfolder.RunFolder.settings).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError


# --- configs -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class HashGridConfig:
    """Multi-resolution hash encoding (Instant-NGP); the reference values are the paper's."""
    n_levels: int = 16
    n_features: int = 8                 # per level
    log2_table: int = 22                # entries per level, log2
    base_res: int = 16                  # coarsest level's cells per axis
    per_level_scale: float = 2.0 ** (9 / 16)
    smoothstep: bool = True             # interpolation weights f*f*(3 - 2f) instead of f

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.n_features


@dataclass(frozen=True)
class ModelConfig:
    """The hash featurized manifold: hash grid on the surface and the paper's decoder."""
    grid: HashGridConfig = field(default_factory=HashGridConfig)
    width: int = 64
    light_dim: int = 32
    exposure_dim: int = 4
    omega0: float = 30.0                # SIREN frequency of the hidden layers
    omega_feat: float = 30.0            # first layer of the feature branch, sin(omega * (W f + b))
    # First-layer frequency of the view-direction SIREN. 30 (SIREN's default) over-fits the
    # directions of the training photos: on held-out close-ups of the multiscale procedural
    # scene 3 gave +3.9 dB (far views +1.5 dB) over 30 (CPU, small preset, 300 steps, one seed).
    omega_dir: float = 3.0
    # Scale-aware levels (backend/footprint.py): each sub-sample weights level l by how well its
    # footprint on the surface resolves the level's cells: 1 where a cell is at least the
    # footprint, fading to 0 over `level_fade` octaves below it (0 switches the weighting off:
    # every level at weight 1, as in the paper). `level_bias` (octaves) moves the fade towards
    # finer levels (> 0) or coarser ones (< 0).
    level_fade: float = 1.0
    level_bias: float = 0.0
    # Per-photo colour gains (3 log-gains, mean zero over the photos) multiplying the linear RGB
    # output in training: exposure and white balance of each photo, kept out of the surface. The
    # paper's exposure codes modulate hidden features instead and learn slowly at its rates.
    photo_gains: bool = True


@dataclass(frozen=True)
class OptimConfig:
    """Adam on an L1 loss; both learning rates decay exponentially to lr_final_ratio."""
    batch_rays: int = 32 * 49152        # reference: 32 views x 49,152 rays
    lr: float = 2e-4                    # decoder and codes (reference)
    grid_lr: float = 1e-2               # hash table (Instant-NGP's rate; 2e-4 barely moves 1e-4-sized entries)
    # Adam's epsilon for the hash table (Instant-NGP: 1e-15). With so small an epsilon an entry that
    # a few rays touch moves by about grid_lr per touch whatever its gradient's size: rarely seen
    # entries drift and light up as isolated bright pixels (capture scene, benchmarks/NOTES.md).
    grid_eps: float = 1e-8
    lr_final_ratio: float = 0.1         # at the last step, as a fraction of the first
    gain_lr: float = 1e-2               # per-photo colour gains (ModelConfig.photo_gains)
    # Regularisers, as gradients of loss terms: grid_decay * sum over levels of the mean square of
    # the level's table (Zip-NeRF's normalised weight decay: coarse levels, with fewer entries,
    # are held harder per entry), and exposure_decay * the mean square of the per-photo codes.
    grid_decay: float = 1.0
    exposure_decay: float = 0.0


@dataclass(frozen=True)
class ScheduleConfig:
    """The training length that follows the capture (backend/schedule.py), used when `iters` is
    None: about `epochs` passes over the ray cache's training rays in at least `min_steps` Adam
    steps (at most `max_steps`); a capture too small to fill that many steps of the preset's batch
    gets a smaller batch (at least `min_batch`) rather than more passes, which over-fit it."""
    # Measured on one H100 with the reference preset (benchmarks/NOTES.md, "A schedule that fits
    # the capture"): a real 10-photo 6 MP capture scored best at ~10 passes (1500 x 262,144 rays,
    # 22.90 dB held out) and 1.4 dB lower at ~80 (2000 x 1.57 M); with this schedule the sparse
    # capture scene peaked at ~6 passes and ended 0.2 dB below (18 passes: the least steps at the
    # least batch), the dense one ended at its best, still rising, at 10.
    epochs: float = 10.0
    min_steps: int = 1500
    max_steps: int = 30000
    min_batch: int = 65536


@dataclass(frozen=True)
class TrainConfig:
    iters: int | None = None            # None: from the capture (schedule); a number: exactly that
    seed: int = 0
    checkpoint_every_s: float = 120.0
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    model: ModelConfig = field(default_factory=ModelConfig)


def to_dict(cfg) -> dict:
    """Nested plain dict (JSON, checkpoints)."""
    return dataclasses.asdict(cfg)


def from_dict(cls, d: dict):
    """The config `cls` from a nested dict; missing keys take their defaults (files written before
    a field existed), unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise InputError(f"unknown {cls.__name__} settings {sorted(unknown)}: the run was written by a "
                         "newer version of the backend; update it.")
    kw = {}
    for k, v in d.items():
        sub = _nested_type(cls, k)
        kw[k] = from_dict(sub, v) if sub is not None and isinstance(v, dict) else v
    return cls(**kw)


def train_config_from_dict(d: dict) -> TrainConfig:
    """RUN/train.json or a checkpoint's settings; also the flat layout of version 0.1 runs.
    Settings a file predates keep the values it was trained with."""
    if "optim" not in d and "batch_rays" in d:
        d = dict(d)
        grid = {k: d.pop(k) for k in ("log2_table", "n_levels", "n_features", "base_res", "per_level_scale")
                if k in d}
        optim = {k: d.pop(k) for k in ("batch_rays", "lr", "grid_lr", "lr_final_ratio") if k in d}
        d.update(optim=optim, model={"grid": grid})
    d = dict(d)
    d["optim"] = {"grid_eps": 1e-15, "grid_decay": 0.0, **d.get("optim", {})}
    return from_dict(TrainConfig, d)


def _nested_type(cls, name: str):
    default = {f.name: f for f in dataclasses.fields(cls)}[name].default_factory
    return default if default is not dataclasses.MISSING and dataclasses.is_dataclass(default) else None


def with_value(cfg, path: str, value):
    """A copy of `cfg` with the field at the dotted `path` (e.g. "optim.lr") set to `value`."""
    head, _, rest = path.partition(".")
    if rest:
        return dataclasses.replace(cfg, **{head: with_value(getattr(cfg, head), rest, value)})
    return dataclasses.replace(cfg, **{head: value})


def get_value(cfg, path: str):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


# --- presets -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    label: str
    description: str
    config: TrainConfig


PRESETS: dict[str, Preset] = {
    "reference": Preset("Reference", "Settings of the paper (16 levels, 2^22 entries per level); CUDA",
                        TrainConfig()),
    # The paper's model as published (for comparisons; the defaults above differ where the capture
    # benchmark measured better: README "Where the defaults differ from the paper").
    "paper": Preset("Paper", "The published model: all grid levels always on, no per-photo gains, Instant-NGP's Adam "
                    "epsilon, no weight decay; CUDA",
                    TrainConfig(optim=OptimConfig(grid_eps=1e-15, grid_decay=0.0),
                                model=ModelConfig(level_fade=0.0, photo_gains=False))),
    # CPU-sized: trains in seconds to minutes on two cores.
    "small": Preset("Small", "A smaller model that trains fast; for previews, CPUs and small GPUs",
                    TrainConfig(iters=600, optim=OptimConfig(batch_rays=4096, lr=1e-3),
                                model=ModelConfig(grid=HashGridConfig(log2_table=17)))),
}
AUTO_PRESET = {"cuda": "reference", "cpu": "small"}     # --preset auto, by device type


def preset(name: str, device_type: str) -> TrainConfig:
    """The named preset ("auto": by device type)."""
    if name == "auto":
        name = AUTO_PRESET.get(device_type, "small")
    if name not in PRESETS:
        raise InputError(f"--preset {name}: unknown preset (choose {', '.join(PRESETS)} or auto).")
    return PRESETS[name].config


# --- output formats (what the add-on and the CLI need to know; the writers are in frame_files) ---

@dataclass(frozen=True)
class OutputFormat:
    label: str
    description: str
    extension: str          # file name suffix without the dot
    linear: bool            # linear RGB (EXR) or sRGB-encoded (PNG); Blender reads it accordingly
    straight_alpha: bool    # alpha not premultiplied (how Blender must composite the strip)


FORMATS: dict[str, OutputFormat] = {
    "png": OutputFormat("PNG", "8-bit sRGB with alpha", "png", linear=False, straight_alpha=True),
    "exr": OutputFormat("OpenEXR", "Linear RGB (premultiplied), alpha, depth, normal and position", "exr",
                        linear=True, straight_alpha=False),
}


# --- options exposed on the command line and in Blender ------------------------------------------

@dataclass(frozen=True)
class Option:
    """One user-facing setting. `name` is the Python/Blender name; the flag is --name with dashes.
    default None: decided later (the preset's, the cache's). `path`: the TrainConfig field it
    overrides. `choices`: (value, label, description) triples."""
    name: str
    kind: type
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[tuple[str, str, str], ...] = ()
    path: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value):
        """`value` if it is within the limits, else InputError naming the flag and the range."""
        if value is None:
            return value
        # A device may name its index ("cuda:1").
        base = value.split(":")[0] if self is DEVICE and isinstance(value, str) else value
        if self.choices and base not in [c[0] for c in self.choices]:
            raise InputError(f"{self.flag} {value}: choose {', '.join(c[0] for c in self.choices)}.")
        lo, hi = self.min, self.max
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            rng = f"from {lo:g} to {hi:g}" if lo is not None and hi is not None else \
                f"at least {lo:g}" if lo is not None else f"at most {hi:g}"
            raise InputError(f"{self.flag} {value}: must be {rng}.")
        return value


DEVICE = Option("device", str, "auto", "where to compute",
                choices=(("auto", "Auto", "CUDA when available, else CPU"),
                         ("cuda", "CUDA", "NVIDIA GPU"),
                         ("cpu", "CPU", "Slow; for small tests")))
GRID_BACKEND = Option("grid_backend", str, "auto", "hash encoding implementation (all compute the same function)",
                      choices=(("auto", "Auto", "Triton on CUDA, PyTorch otherwise"),
                               ("torch", "PyTorch", "the plain PyTorch reference"),
                               ("triton", "Triton", "fused CUDA kernels"),
                               ("tcnn", "tiny-cuda-nn", "only after it passes a self-check in a child process")))
NPROC = Option("nproc", int, 1, "processes, one per GPU (more than 1 runs the command under torchrun)", min=1)

SS = Option("ss", int, 2, "sub-samples per pixel side when rasterizing the mesh (anti-aliasing)", min=1, max=4)
TEST_EVERY = Option("test_every", int, 8, "hold out every k-th photo for evaluation (0: use all)", min=0)
LEVEL = Option("level", int, None, "use images_k/ and cams_k/ (default: the finest level found)", min=0)
CACHE_OPTIONS = (SS, TEST_EVERY, LEVEL)

# How training starts on a run folder that already holds a checkpoint: neither (refused), one or
# the other (not both).
RESUME = Option("resume", bool, False, "continue from the run's checkpoint (fit: and an interrupted ray cache)")
OVERWRITE = Option("overwrite", bool, False, "start over on a trained run folder, or one of another scene, "
                   "replacing its checkpoint")
START_OPTIONS = (RESUME, OVERWRITE)

PRESET = Option("preset", str, "auto", "model and training settings",
                choices=(("auto", "Auto", "Reference on a CUDA GPU, Small on the CPU"),)
                + tuple((k, p.label, p.description) for k, p in PRESETS.items()))
ITERS = Option("iters", int, None, "training steps (default: the preset's, or on a GPU as many as the capture "
               "needs: about 10 passes over its rays, at least 1500 steps)", min=1, path="iters")
# How often this process saves, not a setting of the model: a resumed run takes the value given now.
CHECKPOINT_EVERY = Option("checkpoint_every", float, TrainConfig.checkpoint_every_s,
                          "seconds between checkpoints while training (a crash or kill -9 loses at most "
                          "this much training; Ctrl-C and a stop always save)", min=1.0, max=86400.0,
                          path="checkpoint_every_s")
TRAIN_OPTIONS = (
    ITERS,
    CHECKPOINT_EVERY,
    Option("batch_rays", int, None, "rays per step (reference: 32 x 49152)", min=1, path="optim.batch_rays"),
    Option("log2_table", int, None, "hash table entries per level, log2 (reference 22)", min=8, max=30,
           path="model.grid.log2_table"),
    Option("lr", float, None, "decoder learning rate", min=0.0, path="optim.lr"),
    Option("grid_lr", float, None, "hash table learning rate", min=0.0, path="optim.grid_lr"),
)

FORMAT = Option("format", str, "png", "frame file format",
                choices=tuple((k, f.label, f.description) for k, f in FORMATS.items()))
EXPOSURE = Option("exposure", str, "mean", "'mean' of the training photos, or a photo's name or index")
RENDER_SS = Option("ss", int, None, "sub-samples per pixel side (default: the cache's)", min=1, max=4)


def apply_overrides(cfg: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """`cfg` with the values that are not None set: keys are TRAIN_OPTIONS names (checked against
    their limits) or dotted TrainConfig paths ("model.grid.n_levels", for experiments)."""
    by_name = {opt.name: opt for opt in TRAIN_OPTIONS}
    for key, v in values.items():
        if v is None:
            continue
        opt = by_name.get(key)
        path = opt.path if opt else key
        try:
            get_value(cfg, path)
        except AttributeError:
            raise InputError(f"unknown training setting {key!r}; use one of {', '.join(by_name)} "
                             "or a dotted TrainConfig field such as 'model.grid.n_levels'.") from None
        cfg = with_value(cfg, path, opt.check(v) if opt else v)
    return cfg
