"""Every add-on module imports with bpy and the process exits cleanly (bpy 4.2 crashed at exit,
code 139, when annotations evaluated at import held bpy classes, e.g. `-> Optional[SomePrefs]`).

Modules with bpy properties in class annotations keep them evaluated (Blender reads them), so
there every other annotation that names bpy or one of the module's classes is a string;
the other modules use `from __future__ import annotations`."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from blender_fixtures import ROOT

ADDON = ROOT / "xscale_blender"
# Dotted names below the package ("engine", "core.jobs").
MODULES = sorted(".".join(p.relative_to(ADDON).with_suffix("").parts) for p in ADDON.rglob("*.py")
                 if p.stem != "__init__")


def _path(module: str):
    return ADDON.joinpath(*module.split(".")).with_suffix(".py")


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _evaluated_bpy_annotations(path) -> list[str]:
    tree = ast.parse(path.read_text())
    if any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
           and any(a.name == "annotations" for a in n.names) for n in tree.body):
        return []
    bad_names = {"bpy", "mathutils"} | {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    bad_names |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                  and (n.module or "").split(".")[0] in ("bpy", "mathutils") for a in n.names}
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs + [fn.args.vararg, fn.args.kwarg]
        for ann in [a.annotation for a in args if a is not None] + [fn.returns]:
            if ann is not None and _names(ann) & bad_names:
                found.append(f"{path.name}:{ann.lineno} {ast.unparse(ann)}")
    return found


def test_no_bpy_classes_in_evaluated_annotations():
    found = [hit for m in MODULES for hit in _evaluated_bpy_annotations(_path(m))]
    assert not found, "quote these annotations (or use `from __future__ import annotations`): " + ", ".join(found)


def _has_future_annotations(tree) -> bool:
    return any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
               and any(a.name == "annotations" for a in n.names) for n in tree.body)


def _property_annotations(tree) -> list[str]:
    """Class-level annotations that build bpy properties (`name: StringProperty(...)`)."""
    return [ast.unparse(n.target) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for n in c.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.annotation, ast.Call)]


def test_modules_with_bpy_properties_keep_their_annotations_evaluated():
    """Blender reads property annotations from the class; they stay plain expressions."""
    both = [m for m in MODULES if _has_future_annotations(tree := ast.parse(_path(m).read_text()))
            and _property_annotations(tree)]
    assert not both, f"modules with bpy properties and `from __future__ import annotations`: {both}"


def _imported_roots(tree) -> set[str]:
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return roots | {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}


def test_core_never_imports_blender():
    """core/ is the add-on's bpy-free half: it runs and is tested without Blender (ui_text measures
    with blf only where Blender has it)."""
    core = [m for m in MODULES if m.startswith("core.")]
    assert "core.jobs" in core
    found = {m: sorted(roots) for m in core
             if (roots := _imported_roots(ast.parse(_path(m).read_text())) & {"bpy", "mathutils", "bpy_extras"})}
    assert not found, found


CODE = """
import importlib, sys
import bpy
for name in sys.argv[1:]:
    importlib.import_module("xscale_blender." + name)
import xscale_blender
xscale_blender.register()
xscale_blender.unregister()
print("IMPORTED", len(sys.argv) - 1)
"""


def test_modules_import_and_exit_cleanly(bpy_module, tmp_path):
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"), PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", CODE, *MODULES], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.returncode, res.stdout[-2000:], res.stderr[-3000:])
    assert f"IMPORTED {len(MODULES)}" in res.stdout


@pytest.mark.parametrize("name", ["preferences", "backend_ops", "train_ops"])
def test_single_module_import_exits_cleanly(bpy_module, tmp_path, name):
    """The smallest reproduction of the 4.2 exit crash: `import bpy, xscale_blender.preferences`."""
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"), PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", f"import bpy, xscale_blender.{name}"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.returncode, res.stderr[-3000:])
