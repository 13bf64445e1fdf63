"""CG objects mixed into the captured place, set up by one operator (*Mix CG into Capture*, in
the sidebar's XScale tab and in Render Properties > XScale-NVS).

This scene keeps rendering the capture with XScale-NVS; a second scene ("NAME CG") shows the same
collections and objects (kept in step by a handler) and renders them with Cycles or EEVEE, and
this scene's compositor puts that render over the capture. The capture mesh is the depth test:
in the CG scene it is a Cycles shadow catcher (transparent, but it catches the CG objects'
shadows and hides whatever lies behind it, sample by sample) or, with EEVEE, a holdout (no
shadows). The shadows darken the capture (Cycles' Shadow Catcher pass multiplies it) and the CG
render goes over it with premultiplied alpha. Blender renders the CG scene itself whenever this
scene renders (its Render Layers node names it), so F12, Ctrl-F12 and `blender -b -a` all work.

(The compositor's Z Combine node was measured and not used: on both 4.2 and 5.0 it treats
colour as straight, which halves the capture's anti-aliased edges, and where the CG render's
depth is the catcher's, equal to the capture's, its pick flips from pixel to pixel.)
"""

import bpy
from bpy.app.handlers import persistent
from bpy.props import EnumProperty

from . import compositor_nodes as cn
from .core import ui_text
from .engine import ENGINE_ID
from .importer import P_VIEW
from .panels import XScaleSubPanel, property_split
from .render_panels import XScaleRenderPanel
from .reporting import refuse

P_CG_SCENE = "xscale_cg_scene"      # ID property of the capture's scene: its CG scene
NODE_PREFIX = "XScale "             # the compositor nodes this module owns (rebuilt on each set-up)
ENGINES = (("CYCLES", "Cycles", "The capture mesh catches the CG objects' shadows and hides what is behind it"),
           ("EEVEE", "EEVEE", "The capture mesh hides what is behind it (EEVEE has no shadow catcher)"))
# Render settings the CG scene copies, so that its camera sees exactly what this scene's does.
SYNCED = {"render": ("resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x", "pixel_aspect_y",
                     "fps", "fps_base"),
          "": ("frame_start", "frame_end", "frame_step")}


class SetupError(Exception):
    """What the user has to do before the set-up can work."""


def capture_meshes(scene: "bpy.types.Scene") -> list:
    """The meshes of the captures imported into `scene`: an import makes a collection holding
    the mesh and, in child collections, the photo cameras (importer.import_scene)."""
    out = []
    for coll in scene.collection.children_recursive:
        if any(P_VIEW in ob for child in coll.children for ob in child.all_objects):
            out += [ob for ob in coll.objects if ob.type == "MESH"]
    return out


def cg_scene(scene: "bpy.types.Scene"):
    """The CG scene set up for `scene`, or None."""
    cg = scene.get(P_CG_SCENE)
    return cg if isinstance(cg, bpy.types.Scene) and cg != scene else None


def engine_id(engine: str) -> str:
    """Blender's id of ENGINES' `engine`: EEVEE is BLENDER_EEVEE_NEXT in 4.2 to 4.5."""
    if engine != "EEVEE":
        return engine
    ids = bpy.types.RenderSettings.bl_rna.properties["engine"].enum_items.keys()
    return "BLENDER_EEVEE_NEXT" if "BLENDER_EEVEE_NEXT" in ids else "BLENDER_EEVEE"


def can_denoise() -> bool:
    """Whether this Blender's Cycles has OpenImageDenoise (Debian's Blender has not)."""
    try:
        import _cycles
    except ImportError:
        return False
    return bool(getattr(_cycles, "with_openimagedenoise", False))


def set_up(scene: "bpy.types.Scene", view_layer: "bpy.types.ViewLayer", engine: str = "CYCLES"):
    """Make (or update) `scene`'s CG scene and the compositor nodes; returns the CG scene."""
    owner = next((s for s in bpy.data.scenes if cg_scene(s) == scene), None)
    if owner is not None:
        raise SetupError(f"this is the CG scene of '{owner.name}': switch to that scene and press it there")
    captures = capture_meshes(scene)
    if not captures:
        raise SetupError("no captured mesh in this scene: import the capture first "
                         "(File > Import > XScale-NVS scene)")
    if scene.camera is None:
        raise SetupError("the scene has no camera: set one (Scene Properties > Camera)")
    cg = cg_scene(scene) or bpy.data.scenes.new(f"{scene.name} CG")
    scene[P_CG_SCENE] = cg
    scene.render.engine = ENGINE_ID
    cg.render.engine = engine_id(engine)
    cg.render.film_transparent = True
    cg.world = scene.world
    sync(scene, cg)
    cycles = engine == "CYCLES"
    for ob in captures:
        ob.is_shadow_catcher = cycles
    holdout = {c for ob in captures for c in ob.users_collection}
    cg_layer = cg.view_layers[0]
    _set_holdout(cg_layer.layer_collection, holdout, not cycles)
    if cycles:
        cg_layer.cycles.use_pass_shadow_catcher = True
        if not can_denoise():           # else every frame fails and the composite comes out black
            cg.cycles.use_denoising = False
    _build_nodes(scene, view_layer, cg, cg_layer, cycles)
    return cg


def sync(scene: "bpy.types.Scene", cg: "bpy.types.Scene") -> None:
    """The CG scene shows `scene`'s collections and objects through `scene`'s camera, at its
    size and frames. Writes only what differs (it runs on every depsgraph update)."""
    for want, have, link, unlink in ((scene.collection.children, cg.collection.children,
                                      cg.collection.children.link, cg.collection.children.unlink),
                                     (scene.collection.objects, cg.collection.objects,
                                      cg.collection.objects.link, cg.collection.objects.unlink)):
        for item in set(want) - set(have):
            link(item)
        for item in set(have) - set(want):
            unlink(item)
    if cg.camera != scene.camera:
        cg.camera = scene.camera
    for owner, names in SYNCED.items():
        src, dst = (getattr(scene, owner), getattr(cg, owner)) if owner else (scene, cg)
        for name in names:
            value = getattr(src, name)
            if getattr(dst, name) != value:
                setattr(dst, name, value)


def _set_holdout(layer_collection, collections: set, on: bool) -> None:
    if layer_collection.collection in collections and layer_collection.holdout != on:
        layer_collection.holdout = on
    for child in layer_collection.children:
        _set_holdout(child, collections, on)


def _build_nodes(scene, view_layer, cg, cg_layer, shadows: bool) -> None:
    """This scene's compositor: the CG render over the capture, darkened by the CG objects'
    shadows. The module's nodes (NODE_PREFIX) are replaced; the user's own stay."""
    tree = cn.tree(scene, "Compositing")
    for node in [n for n in tree.nodes if n.name.startswith(NODE_PREFIX)]:
        tree.nodes.remove(node)
    frame = tree.nodes.new("NodeFrame")
    frame.name = frame.label = NODE_PREFIX + "CG over the capture"
    capture = _render_layers(tree, "capture", scene, view_layer.name, (0, 0))
    cg_render = _render_layers(tree, "CG", cg, cg_layer.name, (0, -420))
    background = capture.outputs["Image"]
    nodes = [frame, capture, cg_render]
    if shadows:
        if "Shadow Catcher" not in cg_render.outputs:
            raise SetupError("the CG scene's Shadow Catcher pass is missing: enable the Cycles add-on")
        node, a, b, background = cn.multiply(tree, NODE_PREFIX + "shadows")
        tree.links.new(capture.outputs["Image"], a)
        tree.links.new(cg_render.outputs["Shadow Catcher"], b)
        node.location = (300, -60)
        nodes.append(node)
    node, back, front, result = cn.alpha_over(tree, NODE_PREFIX + "CG over capture")
    tree.links.new(background, back)
    tree.links.new(cg_render.outputs["Image"], front)
    node.location = (520, -200)
    viewer = tree.nodes.new("CompositorNodeViewer")
    viewer.name = viewer.label = NODE_PREFIX + "viewer"
    viewer.location = (760, -380)
    tree.links.new(result, viewer.inputs[0])
    output = cn.result_input(tree)
    if not output.is_linked:        # Blender's own output node, unused so far: next to ours
        output.node.location = (760, -160)
    tree.links.new(result, output)
    for n in nodes + [node, viewer]:
        if n is not frame:
            n.parent = frame


def _render_layers(tree, what: str, scene, layer: str, location):
    node = tree.nodes.new("CompositorNodeRLayers")
    node.name = node.label = f"{NODE_PREFIX}{what} ({scene.name})"
    node.scene, node.layer = scene, layer
    node.location = location
    return node


# --- operator and panels ------------------------------------------------------------------------

class XSCALE_OT_mix_cg(bpy.types.Operator):
    """Render this scene's CG objects with Cycles or EEVEE in a second scene and composite them
    over the capture: the capture mesh hides what is behind it and (Cycles) catches their shadows"""
    bl_idname = "xscale.mix_cg"
    bl_label = "Mix CG into Capture"
    bl_options = {"REGISTER", "UNDO"}

    engine: EnumProperty(name="CG Engine", items=ENGINES, default="CYCLES")

    def execute(self, context):
        try:
            cg = set_up(context.scene, context.view_layer, self.engine)
        except SetupError as e:
            return refuse(self, f"Mix CG into Capture: {e}")
        label = dict((k, v) for k, v, _ in ENGINES)[self.engine]
        self.report({"INFO"}, f"CG objects render with {label} in scene '{cg.name}', over the capture "
                              "(this scene's compositor)")
        return {"FINISHED"}


def draw_cg(layout, context) -> None:
    """The set-up's state and its buttons (both panels)."""
    scene = context.scene
    cg = cg_scene(scene)
    if cg is None:
        ui_text.draw_wrapped(layout, context, "Render the CG objects of this scene with Cycles or EEVEE "
                                              "and composite them over the capture.")
    else:
        name = ui_text.short_path(context, cg.name, share=0.6)
        engine = cg.render.engine
        label = "Cycles" if engine == "CYCLES" else "EEVEE" if "EEVEE" in engine else engine.title()
        layout.label(text=f"CG scene: {name} ({label})", icon="SCENE_DATA")
        if engine == "CYCLES":
            property_split(layout.column()).prop(cg.cycles, "samples", text="CG Samples")
    col = layout.column(align=True)
    for engine, label, _ in ENGINES:
        col.operator(XSCALE_OT_mix_cg.bl_idname, text=f"Mix with {label}", icon="NODE_COMPOSITING").engine = engine


class VIEW3D_PT_xscale_cg(XScaleSubPanel, bpy.types.Panel):
    bl_idname = "VIEW3D_PT_xscale_cg"
    bl_label = "CG Objects"

    def draw(self, context):
        draw_cg(self.layout, context)


class RENDER_PT_xscale_cg(XScaleRenderPanel, bpy.types.Panel):
    bl_label = "CG Objects"
    bl_parent_id = "RENDER_PT_xscale"

    def draw(self, context):
        draw_cg(self.layout, context)


@persistent
def _keep_in_step(scene, *_args) -> None:
    cg = cg_scene(scene)
    if cg is not None and not bpy.app.is_job_running("RENDER"):
        sync(scene, cg)


CLASSES = (XSCALE_OT_mix_cg, VIEW3D_PT_xscale_cg, RENDER_PT_xscale_cg)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    if _keep_in_step not in bpy.app.handlers.depsgraph_update_post:
        bpy.app.handlers.depsgraph_update_post.append(_keep_in_step)


def unregister() -> None:
    while _keep_in_step in bpy.app.handlers.depsgraph_update_post:
        bpy.app.handlers.depsgraph_update_post.remove(_keep_in_step)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
