"""The render engine's panels in the Properties editor: its settings (Render tab), the render
server's state, the passes it writes (View Layer tab), and Blender's own panels that apply to it
(they list the engines they are drawn for)."""
from __future__ import annotations

import bpy

from . import view_transform
from .backend_link import passes
from .core import render_server
from .engine import ENGINE_ID
from .panels import draw_option, draw_props, property_split


class XScaleRenderPanel:
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    COMPAT_ENGINES = {ENGINE_ID}

    @classmethod
    def poll(cls, context):
        return context.engine in cls.COMPAT_ENGINES


class RENDER_PT_xscale(XScaleRenderPanel, bpy.types.Panel):
    bl_label = "XScale-NVS"

    def draw(self, context):
        layout = property_split(self.layout)
        scene = context.scene
        s = scene.xscale
        view_transform.draw(layout.box(), context, scene)
        draw_props(layout.column(), s, ("run_dir", "device", "exposure"))
        col = layout.column(heading="Supersampling", align=True)
        draw_option(col, s, "render_supersample", text="Render")
        col.prop(s, "preview_supersample", text="Viewport")
        layout.prop(s, "preview_divisor", text="Moving 1/N")
        layout.column(heading="Film").prop(scene.render, "film_transparent", text="Transparent")


class RENDER_PT_xscale_server(XScaleRenderPanel, bpy.types.Panel):
    bl_label = "Render Server"
    bl_parent_id = "RENDER_PT_xscale"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        srv = render_server.current()
        col = layout.column(align=True)
        if srv is None or not srv.alive:
            col.label(text="Not running (starts with the first render)", icon="INFO")
        else:
            info = srv.info
            col.label(text=f"Running, process {srv.pid}", icon="CHECKMARK")
            col.label(text=f"{info.get('device', '')}, {info.get('triangles', 0):,} triangles")
        layout.operator("xscale.stop_render_server", icon="CANCEL")


class VIEWLAYER_PT_xscale_passes(XScaleRenderPanel, bpy.types.Panel):
    bl_context = "view_layer"
    bl_label = "Passes"

    def draw(self, context):
        layout = property_split(self.layout).column(heading="Include")
        for p in passes.PASSES.values():
            if p.blender_toggle is not None:
                layout.prop(context.view_layer, p.blender_toggle, text=p.blender_pass)


CLASSES = (RENDER_PT_xscale, RENDER_PT_xscale_server, VIEWLAYER_PT_xscale_passes)

# Blender's panels that list the engines they apply to: ours too, except those for features the
# engine does not have (Freestyle, light probes, EEVEE's and Grease Pencil's render settings).
_SKIP_PANELS = ("freestyle", "lightprobe", "eevee", "gpencil", "grease_pencil", "DATA_PT_preview")


def compatible_panels() -> list:
    out = []
    for name in dir(bpy.types):
        cls = getattr(bpy.types, name, None)
        engines = getattr(cls, "COMPAT_ENGINES", None)
        if not isinstance(engines, set) or "BLENDER_RENDER" not in engines:
            continue
        if any(skip.lower() in name.lower() for skip in _SKIP_PANELS):
            continue
        out.append(cls)
    return out


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    for panel in compatible_panels():
        panel.COMPAT_ENGINES.add(ENGINE_ID)


def unregister() -> None:
    for panel in compatible_panels():
        panel.COMPAT_ENGINES.discard(ENGINE_ID)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
