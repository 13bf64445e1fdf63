"""The Standard view transform for scenes that show the capture.

The model reproduces the photos, and photos are display-referred sRGB: its linear output shown
through Blender's default view transform (AgX, or Filmic) comes out paler and less saturated
than the photos and than `backend render`'s frames, in F12, Ctrl-F12, the viewport and the
sequencer alike. Standard shows them as they are. A scene is switched once (its settings
remember it and what it had before): when it imports a capture, and when its render engine
becomes XScale-NVS in this session (a file opened with the engine already chosen keeps what it
has; the panels then offer Standard). The panels say what the scene uses and offer the one-click
way back (`xscale.view_transform`).
"""
from typing import Optional

import bpy
from bpy.app.handlers import persistent
from bpy.props import StringProperty

from .core import ui_text
from .core import ENGINE_ID

STANDARD = "Standard"
NO_LOOK = "None"


def use_standard(scene: "bpy.types.Scene") -> bool:
    """Switch the scene to Standard (no look) unless it was switched before; returns whether
    the scene's view changed."""
    s = scene.xscale
    if s.view_transform_set:
        return False
    s.view_transform_set = True
    return set_view(scene, STANDARD)


def set_view(scene: "bpy.types.Scene", transform: str, look: str = NO_LOOK) -> bool:
    """Set the view transform and look; leaving another one for Standard remembers it (the way
    back). Returns whether anything changed."""
    vs, s = scene.view_settings, scene.xscale
    if (vs.view_transform, vs.look) == (transform, look):
        return False
    if transform == STANDARD and vs.view_transform != STANDARD:
        s.view_transform_before, s.look_before = vs.view_transform, vs.look
    vs.view_transform = transform
    vs.look = look
    return True


def draw(layout: "bpy.types.UILayout", context, scene: "bpy.types.Scene") -> None:
    """What the scene's view transform does to the capture's colours, and the one button that
    changes it (to Standard, or back to what the scene had)."""
    vs, s = scene.view_settings, scene.xscale
    col = layout.column(align=True)
    if vs.view_transform == STANDARD:
        ui_text.draw_wrapped(col, context, "View Transform: Standard, the photos' colours", icon="COLOR")
        if s.view_transform_before and s.view_transform_before != STANDARD:
            op = col.operator("xscale.view_transform", text=f"Back to {s.view_transform_before}",
                              icon="LOOP_BACK")
            op.transform, op.look = s.view_transform_before, s.look_before or NO_LOOK
        return
    ui_text.draw_wrapped(col, context, f"View Transform: {vs.view_transform}, paler than the photos",
                         icon="ERROR")
    op = col.operator("xscale.view_transform", text="Use Standard", icon="COLOR")
    op.transform, op.look = STANDARD, NO_LOOK


class XSCALE_OT_view_transform(bpy.types.Operator):
    """Set the scene's view transform: Standard shows the capture with the photos' colours"""
    bl_idname = "xscale.view_transform"
    bl_label = "View Transform"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    transform: StringProperty(name="View Transform", default=STANDARD)
    look: StringProperty(name="Look", default=NO_LOOK)

    @classmethod
    def description(cls, context, props):
        if props.transform == STANDARD:
            return ("Use the Standard view transform: F12, the viewport and the sequencer show the capture "
                    "with the photos' colours, as `backend render` writes them")
        return f"Go back to the {props.transform} view transform (the capture looks paler than the photos)"

    def execute(self, context):
        try:
            set_view(context.scene, self.transform, self.look or NO_LOOK)
        except TypeError as e:       # a name this Blender's colour configuration lacks
            self.report({"ERROR"}, f"XScale: {e}")
            return {"CANCELLED"}
        context.scene.xscale.view_transform_set = True
        return {"FINISHED"}


# --- scenes whose engine becomes XScale-NVS ---------------------------------------------------

_engines: dict[str, str] = {}      # scene name -> render engine last seen


def _remember_engines() -> None:
    _engines.clear()
    try:
        scenes = list(bpy.data.scenes)
    except AttributeError:          # data not reachable while the add-on registers
        return
    for scene in scenes:
        _engines[scene.name_full] = scene.render.engine


@persistent
def _on_load(*_args) -> None:
    _remember_engines()            # a file opened with the engine chosen keeps its view


@persistent
def _on_update(scene: "bpy.types.Scene", *_args) -> None:
    engine = scene.render.engine
    before: Optional[str] = _engines.get(scene.name_full)
    _engines[scene.name_full] = engine
    if engine == ENGINE_ID and before != ENGINE_ID and not bpy.app.is_job_running("RENDER"):
        use_standard(scene)


HANDLERS = ((bpy.app.handlers.load_post, _on_load), (bpy.app.handlers.depsgraph_update_post, _on_update))
CLASSES = (XSCALE_OT_view_transform,)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    for handlers, fn in HANDLERS:
        if fn not in handlers:
            handlers.append(fn)
    _remember_engines()


def unregister() -> None:
    for handlers, fn in HANDLERS:
        while fn in handlers:
            handlers.remove(fn)
    _engines.clear()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
