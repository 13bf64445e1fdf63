"""The extension zip: built from the tree, valid for Blender, installs, registers, unregisters."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from blender_fixtures import ROOT, make_tiny_scene

sys.path.insert(0, str(ROOT / "tools"))
import build_extension  # noqa: E402

# Runs in a fresh interpreter with its own user folder, away from the source tree, so only
# the installed copy (and the backend/ inside it) can be imported.
INSTALL_SCRIPT = r'''
import json, sys
import bpy
zip_path, scene_dir = sys.argv[1], sys.argv[2]
out = {}
res = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                               enable_on_install=True)
out["install"] = sorted(res)
name = "bl_ext.user_default.xscale_nvs"
out["enabled"] = name in bpy.context.preferences.addons
out["has_ops"] = hasattr(bpy.ops.xscale, "train") and hasattr(bpy.types, "XSCALE_OT_train")
out["scene_prop"] = hasattr(bpy.types.Scene, "xscale")
mod = sys.modules[name]
out["backend_module"] = mod.backend_link.backend.__name__
out["pythonpath"] = mod.backend_link.pythonpath()
out["prefs"] = bpy.context.preferences.addons[name].preferences.bl_rna.identifier
out["import"] = sorted(bpy.ops.import_scene.xscale_mvsnet(directory=scene_dir, show_photos=False))
out["cameras"] = sorted(o.name for o in bpy.data.objects if "xscale_view" in o)
bpy.ops.preferences.addon_disable(module=name)
out["after_disable"] = [name in bpy.context.preferences.addons, hasattr(bpy.types, "XSCALE_OT_train"),
                        hasattr(bpy.types.Scene, "xscale")]
bpy.ops.preferences.addon_enable(module=name)      # a second register after unregister
out["re_enabled"] = hasattr(bpy.types, "XSCALE_OT_train") and hasattr(bpy.types.Scene, "xscale")
bpy.ops.preferences.addon_disable(module=name)
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory):
    return build_extension.build(tmp_path_factory.mktemp("dist"))


def test_zip_layout(built_zip):
    names = zipfile.ZipFile(built_zip).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names
    assert "backend/__init__.py" in names and "backend/__main__.py" in names
    assert "core/camera_convert.py" in names and "backend/campath.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("tests/", "xscale_blender/"))]
    assert "pyproject.toml" in names and "README.md" in names and "core/backend_setup.py" in names


def test_validates_with_blender_ext(bpy_module, built_zip):
    cli = build_extension.blender_ext_cli()
    assert cli is not None
    res = subprocess.run([sys.executable, str(cli), "validate", str(built_zip)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_install_register_unregister(bpy_module, built_zip, tmp_path):
    scene = make_tiny_scene(tmp_path / "tiny")
    script = tmp_path / "install.py"
    script.write_text(INSTALL_SCRIPT)
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    env.pop("PYTHONPATH", None)
    res = subprocess.run([sys.executable, str(script), str(built_zip), str(scene)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["install"] == ["FINISHED"] and out["enabled"] and out["has_ops"] and out["scene_prop"]
    assert out["backend_module"] == "bl_ext.user_default.xscale_nvs.backend"
    assert Path(out["pythonpath"]) == tmp_path / "user" / "extensions" / "user_default" / "xscale_nvs"
    assert out["prefs"] and out["import"] == ["FINISHED"]
    assert out["cameras"] == ["view_000", "view_001", "view_002"]
    assert out["after_disable"] == [False, False, False] and out["re_enabled"]
    assert "Traceback" not in res.stderr and "Error" not in res.stderr, res.stderr[-3000:]
