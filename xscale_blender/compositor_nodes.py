"""The compositor's node API where Blender 4.2 LTS and 5.0 differ, for the CG compositing set-up
(compositing.py): where a scene's node tree lives, the node that takes the result, and the nodes
whose kind or sockets changed.

4.2 to 4.5: `scene.use_nodes` and `scene.node_tree`, a Composite node, CompositorNodeMixRGB, and
Alpha Over's inputs Fac, Image, Image. 5.0: `scene.compositing_node_group` (a node group whose
Group Output is the result), the shader nodes' Mix, and Alpha Over's inputs Background and
Foreground. Both: Render Layers, Viewer, Frame; Alpha Over's default is premultiplied over.
"""

import bpy

NODE_GROUPS = "compositing_node_group" in bpy.types.Scene.bl_rna.properties    # Blender 5.0 and later


def tree(scene: "bpy.types.Scene", name: str) -> "bpy.types.NodeTree":
    """The scene's compositor node tree (made when it has none); compositing switched on."""
    scene.render.use_compositing = True
    if not NODE_GROUPS:
        fresh = scene.node_tree is None
        scene.use_nodes = True
        if fresh:       # Blender's first tree holds a Render Layers node of its own: no use here
            for node in [n for n in scene.node_tree.nodes if n.bl_idname == "CompositorNodeRLayers"]:
                scene.node_tree.nodes.remove(node)
        return scene.node_tree
    if scene.compositing_node_group is None:
        scene.compositing_node_group = bpy.data.node_groups.new(name, "CompositorNodeTree")
    return scene.compositing_node_group


def result_input(tree: "bpy.types.NodeTree") -> "bpy.types.NodeSocket":
    """The input whose image becomes the render result (an output node is made if missing)."""
    if not NODE_GROUPS:
        node = _first(tree, "CompositorNodeComposite") or tree.nodes.new("CompositorNodeComposite")
        return node.inputs["Image"]
    if not any(getattr(i, "in_out", "") == "OUTPUT" for i in tree.interface.items_tree):
        tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    outs = [n for n in tree.nodes if n.bl_idname == "NodeGroupOutput"]
    node = next((n for n in outs if n.is_active_output), outs[0] if outs else None) \
        or tree.nodes.new("NodeGroupOutput")
    return node.inputs[0]


def multiply(tree: "bpy.types.NodeTree", name: str):
    """A node multiplying colour a by colour b (a's alpha kept): (node, a, b, result)."""
    if not NODE_GROUPS:
        node = tree.nodes.new("CompositorNodeMixRGB")
        node.blend_type = "MULTIPLY"
        return _named(node, name), node.inputs[1], node.inputs[2], node.outputs[0]
    node = tree.nodes.new("ShaderNodeMix")
    node.data_type, node.blend_type = "RGBA", "MULTIPLY"
    _by_id(node.inputs, "Factor_Float").default_value = 1.0
    return (_named(node, name), _by_id(node.inputs, "A_Color"), _by_id(node.inputs, "B_Color"),
            _by_id(node.outputs, "Result_Color"))


def alpha_over(tree: "bpy.types.NodeTree", name: str):
    """Premultiplied `foreground over background`: (node, background, foreground, result)."""
    node = _named(tree.nodes.new("CompositorNodeAlphaOver"), name)
    if not NODE_GROUPS:
        return node, node.inputs[1], node.inputs[2], node.outputs[0]
    return node, node.inputs["Background"], node.inputs["Foreground"], node.outputs[0]


def _named(node, name: str):
    node.name = node.label = name
    return node


def _first(tree, bl_idname: str):
    return next((n for n in tree.nodes if n.bl_idname == bl_idname), None)


def _by_id(sockets, identifier: str):
    return next(s for s in sockets if s.identifier == identifier)
