"""3D View sidebar: XScale tab. Text is wrapped and paths are shortened to the sidebar's real
width (ui_text); without numpy in Blender's Python the tab says what to install (deps)."""
from __future__ import annotations

import bpy

from .core import deps, jobs, run_log, ui_text
from .properties import SCENE_OPTIONS, auto_value, run_folder


class XScalePanelBase:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "XScale"


class XScaleSubPanel(XScalePanelBase):
    bl_parent_id = "VIEW3D_PT_xscale"

    @classmethod
    def poll(cls, context):
        return not deps.missing()


class VIEW3D_PT_xscale(XScalePanelBase, bpy.types.Panel):
    bl_idname = "VIEW3D_PT_xscale"
    bl_label = "XScale-NVS"

    def draw(self, context):
        layout = self.layout
        if deps.missing():
            draw_missing(layout, context)
            return
        from .importer import P_SPLIT
        s = context.scene.xscale
        layout.operator("import_scene.xscale_mvsnet", text="Import Scene", icon="IMPORT")
        col = layout.column(align=True)
        col.prop(s, "scene_dir", text="Scene")      # "Scene Folder", "Run Folder" in the tooltips
        col.prop(s, "run_dir", text="Run")
        ob = context.active_object
        if ob is not None and ob.type == "CAMERA" and P_SPLIT in ob:
            row = layout.row()
            kind = "held out" if ob[P_SPLIT] == "test" else "training"
            name = ui_text.short_path(context, ob.name, share=0.5)
            row.label(text=f"{name}: {kind} photo", icon="OUTLINER_OB_CAMERA")
            row.operator("xscale.use_camera", text="", icon="VIEW_CAMERA")
        draw_job(layout, context)
        if jobs.active() is None:
            draw_last_stop(layout, context, s)


def property_split(layout: "bpy.types.UILayout") -> "bpy.types.UILayout":
    """`layout` set up as Blender's property panels are: labels left of their fields, no
    animation decorators."""
    layout.use_property_split = True
    layout.use_property_decorate = False
    return layout


def draw_props(layout: "bpy.types.UILayout", data, names: tuple[str, ...]) -> None:
    """A row for each of `data`'s properties `names`, in order (draw_option's for scene settings)."""
    for name in names:
        draw_option(layout, data, name)


def draw_option(layout: "bpy.types.UILayout", data, name: str, text: str = "") -> None:
    """A property row. A scene setting left to the backend (its `unset` value: a number that
    would look real, such as Iterations 0) reads 'Auto (preset: 600)' instead: a button that
    lets the user set it; once set, a button next to the field puts it back to Auto."""
    setting = SCENE_OPTIONS.get(name)
    label = {"text": text} if text else {}
    if setting is None or setting.unset is None or setting.option.kind is str:
        layout.prop(data, name, **label)
        return
    if getattr(data, name) == setting.unset:
        split = layout.split(factor=0.4, align=True)       # as use_property_split lays out a row
        left = split.row()
        left.alignment = "RIGHT"
        left.label(text=text or setting.label)
        op = split.operator("xscale.option_auto", text=f"Auto ({auto_value(data, name)[1]})")
        op.name, op.auto = name, False
        return
    row = layout.row(align=True)
    row.prop(data, name, **label)
    op = row.operator("xscale.option_auto", text="", icon="X")
    op.name, op.auto = name, True


def draw_missing(layout: "bpy.types.UILayout", context) -> None:
    """What Blender's Python lacks and the command that installs it."""
    box = layout.box()
    ui_text.draw_wrapped(box, context, deps.message(), alert=True, icon="ERROR")
    box.operator("xscale.copy_text", text="Copy Command", icon="COPYDOWN").text = \
        deps.install_command(next(iter(deps.missing())))


def draw_job(layout: "bpy.types.UILayout", context=None,
             margin_px: float = ui_text.SIDEBAR_MARGIN_PX) -> None:
    """Progress of the current (or last) job: bar with stage and step, then the numbers, and the
    one Stop button."""
    context = context if context is not None else bpy.context
    job = jobs.active()
    if job is None:
        return
    st = job.state
    box = layout.box()
    if job.finished:
        icon = {"done": "CHECKMARK", "stopped": "PAUSE", "failed": "ERROR"}[st.status]
        box.label(text=f"{job.label.title()} {st.status}", icon=icon)
        for text in (st.message, st.outcome):
            if text:
                ui_text.draw_wrapped(box, context, text, alert=st.status == jobs.FAILED, margin_px=margin_px)
        return
    text = f"{st.stage or 'starting'} {jobs.progress_text(st)}" if st.total else (st.stage or "starting")
    box.progress(factor=st.fraction, type="BAR", text=("stopping: " if job.stopping else "") + text)
    grid = box.grid_flow(columns=2, even_columns=True, align=True)
    if st.loss is not None:
        grid.label(text=f"Loss {st.loss:.4f}")
    if st.psnr is not None:
        grid.label(text=f"PSNR {st.psnr:.2f} dB")
    if st.eta_s is not None or st.unit != "%":
        grid.label(text=jobs.eta_text(st))
    if st.message:
        ui_text.draw_wrapped(box, context, st.message, margin_px=margin_px)
    box.operator("xscale.stop", text="Kill" if job.stopping else "Stop", icon="CANCEL")


def draw_last_stop(layout: "bpy.types.UILayout", context, s) -> None:
    """A job on the run folder that ended stopped (in an earlier session: Blender quit while it
    ran): where it stopped, what was kept, and Resume."""
    run = run_folder(s)
    ev = run_log.last_stop(str(run.log)) if run is not None else None
    if ev is None:
        return
    box = layout.box()
    stage = str(ev.get("stage") or "job")
    ui_text.draw_wrapped(box, context, f"Last {stage}: {jobs.describe_stop(ev)}", icon="PAUSE")
    if stage in ("cache", "train"):
        row = box.row()
        row.enabled = not jobs.busy()
        row.operator("xscale.train", text="Resume", icon="FILE_REFRESH").resume = True


class VIEW3D_PT_xscale_train(XScaleSubPanel, bpy.types.Panel):
    bl_idname = "VIEW3D_PT_xscale_train"
    bl_label = "Training"

    def draw(self, context):
        layout = property_split(self.layout)
        s = context.scene.xscale
        draw_props(layout.column(), s, ("preset", "iterations", "checkpoint_every", "device", "gpus", "supersample",
                                        "test_every", "level", "mesh_path"))
        row = layout.row(align=True)
        row.enabled = not jobs.busy()      # Stop is in the job's box above
        row.operator("xscale.train", text="Cache + Train", icon="PLAY").resume = False
        row.operator("xscale.train", text="Resume", icon="FILE_REFRESH").resume = True


class VIEW3D_PT_xscale_render(XScaleSubPanel, bpy.types.Panel):
    bl_idname = "VIEW3D_PT_xscale_render"
    bl_label = "Render Camera Path"

    def draw(self, context):
        layout = property_split(self.layout)
        scene = context.scene
        s = scene.xscale
        col = layout.column()
        draw_props(col, s, ("render_format", "exposure", "render_supersample", "render_dir"))
        col.separator()
        draw_props(col, s, ("strip_scene", "strip_channel", "strip_use_path_start"))
        sub = col.row()
        sub.enabled = not s.strip_use_path_start
        sub.prop(s, "strip_frame_start")
        if s.strip_scene is None or s.strip_scene == scene:
            where = (f"The strip goes to a new scene '{scene.name} Edit'." if s.strip_scene is None else
                     "F12 and Ctrl-F12 here will render the strip, not the model.")
            ui_text.draw_wrapped(col, context, where, alert=s.strip_scene is not None, icon="SEQUENCE")
        from . import view_transform        # needs numpy, as this sub-panel does (deps)
        view_transform.draw(layout.box(), context, scene)
        cam = scene.camera
        name = ui_text.short_path(context, cam.name, share=0.6) if cam else "No camera"
        layout.label(text=f"{name}, frames {scene.frame_start}-{scene.frame_end}",
                     icon="CAMERA_DATA")
        row = layout.row(align=True)
        row.enabled = not jobs.busy() and cam is not None
        row.operator("xscale.render_path", text="Render", icon="RENDER_ANIMATION")
        row.operator("xscale.assemble_strip", text="", icon="SEQUENCE")
        row.operator("xscale.export_path", text="", icon="EXPORT")


CLASSES = (VIEW3D_PT_xscale, VIEW3D_PT_xscale_train, VIEW3D_PT_xscale_render)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
