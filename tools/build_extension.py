"""Build the Blender extension zip: manifest at the root, the add-on files next to it, and
backend/ inside, so the installed extension carries the backend it launches, with the
pyproject.toml (and the README.md it names) that `pip install EXTENSION_FOLDER` needs (the
add-on's Set Up Backend installs the backend's environment from there).

    python tools/build_extension.py [--out dist/] [--no-validate]

When the `bpy` module is installed, the zip is checked with the `blender_ext.py` command line
that ships with it (the same checks as `blender --command extension validate`).
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
ADDON_DIR = ROOT / "xscale_blender"
BACKEND_DIR = ROOT / "backend"
MANIFEST = ROOT / "blender_manifest.toml"
PIP_FILES = ("pyproject.toml", "README.md")
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not SKIP_DIRS.intersection(p.relative_to(folder).parts)
                  and p.suffix not in SKIP_SUFFIXES)


def build(out_dir: Path) -> Path:
    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    out_dir.mkdir(parents=True, exist_ok=True)
    zpath = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    tmp = zpath.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(MANIFEST, "blender_manifest.toml")
        for p in PIP_FILES:          # what pip needs to install the backend (Set Up Backend)
            zf.write(ROOT / p, p)
        for p in _files(ADDON_DIR):
            zf.write(p, p.relative_to(ADDON_DIR).as_posix())
        for p in _files(BACKEND_DIR):
            zf.write(p, ("backend" / p.relative_to(BACKEND_DIR)).as_posix())
    tmp.replace(zpath)
    return zpath


def blender_ext_cli() -> Optional[Path]:
    """blender_ext.py inside the installed bpy module, without importing bpy (slow)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.origin:
        return None
    hits = sorted(Path(spec.origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    return hits[-1] if hits else None


def validate(zpath: Path) -> None:
    cli = blender_ext_cli()
    if cli is None:
        print("bpy not installed: skipping validation")
        return
    res = subprocess.run([sys.executable, str(cli), "validate", str(zpath)],
                         capture_output=True, text=True)
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    if res.returncode != 0:
        raise SystemExit(f"validation failed: {zpath}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    ap.add_argument("--no-validate", action="store_true", help="skip the blender_ext.py check")
    args = ap.parse_args(argv)
    zpath = build(args.out)
    print(zpath)
    if not args.no_validate:
        validate(zpath)
    return 0


if __name__ == "__main__":
    sys.exit(main())
