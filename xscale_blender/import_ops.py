"""Import operators (File > Import): an MVSNet scene folder, or a source of another format
(COLMAP, Metashape, ...: backend/prepare/sources.py) converted to one first, then the scene check.

Conversion and the check are the backend's numpy-only `prepare` code, run in Blender's own
Python; photos that need undistorting (OpenCV) or resizing (Pillow) are converted by a backend
job instead. The import itself is importer.py.
"""

import shlex
from pathlib import Path
from typing import Optional

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import importer, preferences, view_transform
from .backend_link import config, prepare, silenced_events
from .core import jobs
from .job_runner import start_backend
from .properties import abspath, option_property
from .reporting import refuse

P_REPORT = "xscale_report"       # check report text, stored on the imported collection
CHECK_MAX_SIDE = 128
# The sources File > Import converts first (backend/prepare/sources.py; MVSNet scenes import as they are).
CONVERTED = prepare.sources.CONVERTED
CONVERTED_FOLDERS = prepare.sources.either([s.folder for s in CONVERTED])


def check_imported_scene(coll: "bpy.types.Collection", scene_dir: str,
                         level: "Optional[int]", coverage: bool = True) -> tuple[str, str]:
    """Run the scene check, print it, store it on `coll`; returns (report level, one-line summary)."""
    try:
        with silenced_events():
            rep = prepare.check_scene(scene_dir, level=level, coverage=coverage, max_side=CHECK_MAX_SIDE)
    except (importer.InputError, ValueError, OSError) as e:
        text = f"Scene check failed: {e}"
        print(f"XScale: {text}", flush=True)
        coll[P_REPORT] = text
        return "WARNING", text
    text = prepare.format_report(rep)
    print(text, flush=True)
    coll[P_REPORT] = text
    n = rep["n_views"]
    parts = [f"check {rep['status']}: {n} views"]
    if rep.get("coverage_mean") is not None:
        parts.append(f"mean mesh coverage {rep['coverage_mean']:.1%}")
    missing = rep["views_not_reached"]
    if missing:
        parts.append(f"{len(missing)} of {n} views do not see the mesh")
    level_name = "WARNING" if missing or rep["errors"] else "INFO"
    return level_name, ", ".join(parts)


def _finish_import(op: "bpy.types.Operator", coll: "bpy.types.Collection", scene_dir: str,
                   level: "Optional[int]", prefix: str = "") -> set[str]:
    n = sum(1 for ob in coll.all_objects if ob.type == "CAMERA")
    message = f"{prefix}Imported {n} cameras into '{coll.name}'"
    s, view = bpy.context.scene.xscale, bpy.context.scene.view_settings.view_transform
    if view == view_transform.STANDARD and s.view_transform_before:
        message += (f"; View Transform: Standard, the photos' colours (was {s.view_transform_before}: the "
                    "XScale tab switches back)")
    level_name = "INFO"
    if op.check_scene:
        level_name, summary = check_imported_scene(coll, scene_dir, level)
        message += f"; {summary} (full report in the console and on the collection)"
    op.report({level_name}, message)
    return {"FINISHED"}


class _FolderImport:
    """What the import operators share: the file browser, which picks a folder (`directory`),
    and their options."""
    filter_folder: BoolProperty(default=True, options={"HIDDEN"})
    import_mesh: BoolProperty(name="Mesh", default=True, description="Import the scene mesh")
    show_photos: BoolProperty(name="Photos as Backgrounds", default=True,
                              description="Show each photo as its camera's background image")
    test_every: option_property(config.TEST_EVERY, "Hold Out Every",
                                note="marks those cameras as held out, as the backend splits them")
    set_active: BoolProperty(name="Set Active Camera", default=True,
                             description="Make the first training camera the scene camera")
    check_scene: BoolProperty(name="Check Scene", default=True,
                              description="Run the scene check (mesh coverage per view) after importing and "
                                          "store its report on the collection (slow on huge meshes)")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}


class IMPORT_SCENE_OT_xscale_mvsnet(_FolderImport, bpy.types.Operator):
    """Import an MVSNet scene folder: the mesh and one camera per photo"""
    bl_idname = "import_scene.xscale_mvsnet"
    bl_label = "Import XScale-NVS Scene"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Scene Folder", subtype="DIR_PATH")
    level: option_property(config.LEVEL, "Image Level", unset=-1)

    def execute(self, context):
        if not self.directory:
            return refuse(self, "Choose a scene folder")
        level = None if self.level < 0 else self.level
        try:
            coll = importer.import_scene(
                context, self.directory, mesh=self.import_mesh, photos=self.show_photos,
                test_every=self.test_every, level=level, set_active=self.set_active)
        except importer.InputError as e:
            return refuse(self, str(e))
        return _finish_import(self, coll, context.scene.xscale.scene_dir, level)


def default_convert_output(src: str) -> str:
    """SOURCE_mvsnet next to the source folder."""
    p = Path(src)
    return str(p.parent / f"{p.name}_mvsnet")


def _has_pillow() -> bool:
    try:
        import PIL  # noqa: F401
    except ImportError:
        return False
    return True


def prepare_arguments(src: str, dst: str, source: str, downsample: int) -> list[str]:
    """`backend prepare` arguments of a conversion."""
    argv = [src, "--out", dst, "--downsample", str(downsample)]
    return argv + (["--from", source] if source != "auto" else [])


def prepare_command(src: str, dst: str, source: str, downsample: int) -> str:
    """The shell command that converts in the backend environment."""
    argv = ["python", "-m", "backend", "prepare", *prepare_arguments(src, dst, source, downsample)]
    return " ".join(shlex.quote(a) for a in argv)


def _convert_in_backend(op, src: str, dst: str) -> set[str]:
    """Run `backend prepare` in the backend environment (it undistorts photos with OpenCV and
    resizes them with Pillow, which Blender's Python lacks), then import the scene it wrote."""
    try:
        preferences.backend_python()
    except preferences.BackendNotConfigured as e:
        return refuse(op, f"These photos need undistorting or resizing in the backend environment: {e} "
                          "Or run this there and import the result as an MVSNet scene: "
                          f"{prepare_command(src, dst, op.source, op.downsample)}")
    opts = dict(mesh=op.import_mesh, photos=op.show_photos, test_every=op.test_every, set_active=op.set_active)
    check = op.check_scene

    def on_finish(job: jobs.Job) -> None:
        if job.state.status != jobs.DONE:
            return
        level = next((r.get("level") for r in reversed(job.state.results) if r.get("stage") == "prepare"), None)
        try:
            coll = importer.import_scene(bpy.context, dst, level=level, **opts)
        except importer.InputError as e:
            job.state.status, job.state.error = jobs.FAILED, str(e)
            job.state.message = job.state.error
            return
        if check:
            check_imported_scene(coll, dst, level)

    args = prepare_arguments(src, dst, op.source, op.downsample) + ["--no-check"]
    return start_backend(op, "prepare", args, "convert", False, on_finish)


class IMPORT_SCENE_OT_xscale_convert(_FolderImport, bpy.types.Operator):
    """Convert a source of another format (CONVERTED) into an MVSNet scene folder, then import it"""
    bl_idname = "import_scene.xscale_convert"
    bl_label = "Import Capture or Photos"       # the formats are many: the description names them
    bl_description = f"Convert a {CONVERTED_FOLDERS} into an MVSNet scene folder, then import it"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Source Folder", subtype="DIR_PATH",
                              description=f"{CONVERTED_FOLDERS} (photos with lens distortion are undistorted "
                                          "by the backend)")
    output_dir: StringProperty(name="Output Scene Folder", subtype="DIR_PATH",
                               description="Where to write the MVSNet scene (empty: SOURCE_mvsnet next to "
                                           "the source folder)")
    source: EnumProperty(name="Source Type", default="auto", items=[
        ("auto", "Auto", "Detect the source type"), *((s.name, s.label, s.description) for s in CONVERTED)])
    downsample: IntProperty(name="Downsample", default=1, min=1, max=16,
                            description="Shrink the photos this many times (above 1 the conversion runs in the "
                                        "backend environment)")

    def execute(self, context):
        if not self.directory:
            return refuse(self, f"Choose a {prepare.sources.either([s.label for s in CONVERTED])} folder")
        src = abspath(self.directory)
        dst = abspath(self.output_dir) if self.output_dir else default_convert_output(src)
        if self.downsample > 1 and not _has_pillow():
            return _convert_in_backend(self, src, dst)
        try:
            with silenced_events():
                summary = prepare.convert(src, dst, source=self.source, downsample=self.downsample,
                                          undistort=False)
            coll = importer.import_scene(
                context, dst, mesh=self.import_mesh, photos=self.show_photos, test_every=self.test_every,
                level=summary["level"], set_active=self.set_active)
        except prepare.NeedsBackend:      # lens distortion: OpenCV, in the backend environment
            return _convert_in_backend(self, src, dst)
        except importer.InputError as e:
            return refuse(self, str(e))
        print(f"XScale: converted {summary['views']} view(s) into {summary['images_dir']} and "
              f"{summary['cams_dir']}; mesh {summary['mesh']}", flush=True)
        for note in summary.get("notes") or ():
            print(f"XScale: note: {note}", flush=True)
        return _finish_import(self, coll, dst, summary["level"], prefix=f"Converted to {dst}. ")


def menu_import(self, context):
    self.layout.operator(IMPORT_SCENE_OT_xscale_mvsnet.bl_idname, text="XScale-NVS scene (MVSNet)")
    self.layout.operator(IMPORT_SCENE_OT_xscale_convert.bl_idname, text="XScale-NVS from capture or photos")


CLASSES = (IMPORT_SCENE_OT_xscale_mvsnet, IMPORT_SCENE_OT_xscale_convert)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_file_import.append(menu_import)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
