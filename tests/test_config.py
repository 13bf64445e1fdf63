"""backend.config: one source of settings for the configs, presets, CLI and add-on."""
import json
import subprocess
import sys

import pytest

from backend import config
from backend.config import TrainConfig, apply_overrides, from_dict, preset, to_dict, train_config_from_dict
from backend.errors import InputError
from conftest import ROOT


def test_config_round_trips_through_json():
    tc = apply_overrides(preset("small", "cpu"), {"lr": 3e-3, "model.grid.n_levels": 12})
    back = from_dict(TrainConfig, json.loads(json.dumps(to_dict(tc))))
    assert back == tc and back.optim.lr == 3e-3 and back.model.grid.n_levels == 12
    assert back.model.grid.log2_table == 17          # the small preset's, kept


def test_presets_and_auto():
    assert preset("auto", "cuda") == TrainConfig() == config.PRESETS["reference"].config
    small = preset("auto", "cpu")
    assert small.optim.batch_rays == 4096 and small.model.grid.log2_table == 17 and small.iters == 600
    with pytest.raises(InputError, match="--preset huge"):
        preset("huge", "cpu")


def test_overrides_are_checked_and_unknown_keys_refused():
    with pytest.raises(InputError, match="--log2-table 40: must be from 8 to 30"):
        apply_overrides(TrainConfig(), {"log2_table": 40})
    with pytest.raises(InputError, match="unknown training setting 'n_level'"):
        apply_overrides(TrainConfig(), {"n_level": 3})
    assert apply_overrides(TrainConfig(), {"batch_rays": None}) == TrainConfig()


def test_flat_settings_of_older_runs_still_load():
    old = {"iters": 50, "batch_rays": 999, "lr": 1e-3, "grid_lr": 1e-2, "lr_final_ratio": 0.1, "seed": 0,
           "checkpoint_every_s": 120.0, "log2_table": 12, "n_levels": 16, "n_features": 8, "base_res": 16,
           "per_level_scale": 1.5}
    tc = train_config_from_dict(old)
    assert (tc.iters, tc.optim.batch_rays, tc.model.grid.log2_table, tc.model.grid.per_level_scale) == (50, 999, 12, 1.5)
    with pytest.raises(InputError, match="newer version"):
        from_dict(TrainConfig, {"iters": 5, "warp_drive": True})


def test_cli_takes_defaults_and_limits_from_config():
    from backend.cli import build_parser
    a = build_parser().parse_args(["fit", "--scene", "s", "--run", "r"])
    assert (a.ss, a.test_every, a.preset, a.device) == (config.SS.default, config.TEST_EVERY.default, "auto", "auto")
    p = subprocess.run([sys.executable, "-m", "backend", "cache", "--scene", "s", "--run", "r", "--ss", "8"],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and "--ss 8: must be from 1 to 4" in p.stderr
    assert json.loads(p.stdout.splitlines()[-1])["event"] == "error"


def test_config_module_needs_only_the_standard_library():
    """The Blender add-on imports it (no torch, no numpy there)."""
    code = ("import sys; sys.modules['numpy'] = None; sys.modules['torch'] = None; "
            "import backend.config as c; print(len(c.PRESETS))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_settings_a_run_predates_keep_their_old_values():
    """A run trained before the regularisers existed resumes without them (its optimiser moved
    the table with Instant-NGP's epsilon and no decay)."""
    new = to_dict(TrainConfig())
    del new["optim"]["grid_eps"], new["optim"]["grid_decay"]
    tc = train_config_from_dict(new)
    assert tc.optim.grid_eps == 1e-15 and tc.optim.grid_decay == 0.0
    assert train_config_from_dict(to_dict(TrainConfig())) == TrainConfig()


def test_paper_preset_is_the_reference_without_this_projects_quality_changes():
    ref, paper = preset("reference", "cuda"), preset("paper", "cuda")
    assert (paper.model.level_fade, paper.model.photo_gains) == (0.0, False)
    assert (paper.optim.grid_eps, paper.optim.grid_decay) == (1e-15, 0.0)
    assert paper.model.grid == ref.model.grid and paper.optim.batch_rays == ref.optim.batch_rays
    assert (ref.model.level_fade, ref.model.photo_gains, ref.optim.grid_eps, ref.optim.grid_decay) == (1.0, True, 1e-8, 1.0)
