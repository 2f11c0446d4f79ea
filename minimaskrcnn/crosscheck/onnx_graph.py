"""Reading a torchvision R-CNN ONNX export: module scopes, constants, and the tensors at the stage boundaries.

`torch.onnx.export` (the TorchScript exporter) names every node after the module that emitted it, e.g.
`/backbone/body/layer1/layer1.0/conv1/Conv`: each path component is a module's attribute name, a child of a
container repeats its parent's name (`layer1.0` inside `layer1`), and a module called again gets a suffix (`_1`,
`_2`: the RPN head on each pyramid level). `scope()` turns that back into the state-dict prefix
`backbone.body.layer1.0.conv1`. The stage boundaries are then found as the edges of the graph where a tensor passes
from one module to another (`Graph.crossing`), e.g. the C maps are the tensors made inside `backbone.body` and
consumed inside `backbone.fpn`: nothing here depends on one export's node numbering, and a graph that changes a
computation inside a stage keeps its boundaries where they were.

Nodes without a scope (the `If` around NMS, `Loop` for pasting, `Identity` aliases of deduplicated initializers)
belong to no module; they count as "outside" every module.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

_CALL_SUFFIX = re.compile(r"_\d+$")        # `cls_logits_3`: the 4th call of the module cls_logits


def scope(node_name: str) -> str:
    """State-dict module path of a node: '/backbone/body/layer1/layer1.0/conv1/Conv' -> 'backbone.body.layer1.0.conv1';
    '' for a node without scope (its name does not start with '/')."""
    if not node_name.startswith("/"):
        return ""
    parts, prev = [], None
    for comp in node_name.split("/")[1:-1]:        # the last component is the op's own name
        comp = _CALL_SUFFIX.sub("", comp)
        parts.append(comp[len(prev) + 1:] if prev and comp.startswith(prev + ".") else comp)
        prev = comp
    return ".".join(parts)


def within(module: str, prefix: str) -> bool:
    """Is `module` the module `prefix` or inside it (on whole name components)?"""
    return module == prefix or module.startswith(prefix + ".")


@dataclass
class Graph:
    """The top-level graph of an ONNX model, indexed: producer and consumers of every tensor, constant values."""

    path: str
    model: object                               # onnx.ModelProto
    nodes: list                                 # top-level NodeProto, in (topological) file order
    producer: dict = field(default_factory=dict)    # tensor name -> node
    consumers: dict = field(default_factory=lambda: defaultdict(list))
    initializers: dict = field(default_factory=dict)  # name -> TensorProto (converted lazily by `constant`)
    constant_nodes: dict = field(default_factory=dict)  # output name -> Constant node
    alias: dict = field(default_factory=dict)   # Identity output -> its input
    input_name: str = ""
    input_shape: tuple = ()                     # ints, or None for a dynamic axis
    output_names: tuple = ()

    def source(self, name: str) -> str:
        """The tensor `name` refers to, following Identity aliases (the exporter's deduplicated initializers)."""
        seen = set()
        while name in self.alias and name not in seen:
            seen.add(name)
            name = self.alias[name]
        return name

    def constant(self, name: str):
        """The value of an initializer or Constant output (through Identity aliases), else None."""
        from onnx import numpy_helper
        name = self.source(name)
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.constant_nodes.get(name)
        if node is not None and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def is_constant(self, name: str) -> bool:
        name = self.source(name)
        return name in self.initializers or name in self.constant_nodes

    def crossing(self, inside: str, into: str, exclude: tuple = ()) -> list:
        """Non-constant tensors produced by a node in module `inside` (but not in `exclude` sub-modules) and consumed
        by a node in `into` but outside `inside` ('' = any node outside `inside`, or a graph output), in the order of
        their producers."""
        found, outputs = [], set(self.output_names)
        for node in self.nodes:
            s = scope(node.name)
            if not within(s, inside) or any(within(s, e) for e in exclude) or node.op_type == "Constant":
                continue
            for t in node.output:
                users = [scope(c.name) for c in self.consumers.get(t, ())]
                if into:
                    hit = any(within(u, into) and not within(u, inside) for u in users)
                else:
                    hit = t in outputs or any(not within(u, inside) for u in users)
                if hit and t not in found:
                    found.append(t)
        return found

    def nodes_in(self, module: str, op_type: str | None = None) -> list:
        return [n for n in self.nodes if within(scope(n.name), module) and (op_type is None or n.op_type == op_type)]


def read_graph(path) -> Graph:
    """Load and index an ONNX file. One-line ValueError if it is no ONNX model, or no torchvision R-CNN export."""
    import onnx
    path = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(64)
        if not head:
            raise ValueError(f"{path}: not an ONNX model (the file is empty)")
        model = onnx.load(path)
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError:
        raise
    except Exception as e:          # protobuf DecodeError and friends
        raise ValueError(f"{path}: not an ONNX model ({type(e).__name__}: {' '.join(str(e).split())[:120]})") \
            from None
    if not model.graph.node:
        raise ValueError(f"{path}: not an ONNX model (no graph nodes; a protobuf file of another kind?)")
    g = Graph(path, model, list(model.graph.node))
    for node in g.nodes:
        for t in node.output:
            g.producer[t] = node
        for t in node.input:
            if t:
                g.consumers[t].append(node)
        if node.op_type == "Constant":
            g.constant_nodes[node.output[0]] = node
        elif node.op_type == "Identity":
            g.alias[node.output[0]] = node.input[0]
    g.initializers = {t.name: t for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in g.initializers]
    g.output_names = tuple(o.name for o in model.graph.output)
    _require_rcnn(g, inputs)
    g.input_name = inputs[0].name
    dims = inputs[0].type.tensor_type.shape.dim
    g.input_shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return g


def _require_rcnn(g: Graph, inputs) -> None:
    """Refuse, saying what was found, a model that is not a torchvision Mask R-CNN / Faster R-CNN export."""
    tops = sorted({scope(n.name).split(".")[0] for n in g.nodes} - {""})
    convs = [n for n in g.nodes if n.op_type == "Conv"]
    has = {m: any(within(scope(n.name), m) for n in convs) for m in ("backbone.body", "backbone.fpn", "rpn.head")}
    rois = any(n.op_type == "RoiAlign" for n in g.nodes)
    if all(has.values()) and rois and len(inputs) == 1:
        return
    if not convs:
        what = f"no convolution at all ({len(g.nodes)} nodes; ops {', '.join(_top_ops(g))})"
    elif not any(n.name.startswith("/") for n in convs):
        what = (f"{len(convs)} convolutions without module-scoped names (not exported by torch.onnx.export's "
                f"TorchScript exporter from a torchvision model?)")
    elif len(inputs) != 1:
        what = f"{len(inputs)} graph inputs ({', '.join(i.name for i in inputs)}), an R-CNN export has one image"
    else:
        missing = [m for m, ok in has.items() if not ok] + ([] if rois else ["RoiAlign"])
        what = f"modules {', '.join(tops) or 'none'}, without {', '.join(missing)}"
    raise ValueError(f"{g.path}: not a torchvision R-CNN export: found {what}; expected a Mask R-CNN / Faster "
                     f"R-CNN exported by torch.onnx.export (backbone.body, backbone.fpn, rpn, roi_heads)")


def _top_ops(g: Graph, n: int = 5) -> list:
    counts = defaultdict(int)
    for node in g.nodes:
        counts[node.op_type] += 1
    return [f"{op} x{c}" for op, c in sorted(counts.items(), key=lambda kv: -kv[1])[:n]]


# --- stage boundaries ---------------------------------------------------------------------------------------------

# (stage group, module the tensor is made in, module it flows into ('' = anywhere outside), sub-modules excluded).
# Every entry is torchvision's module structure (generalized_rcnn.py, rpn.py, roi_heads.py), not one export's layout.
BOUNDARIES = (
    ("normalized", "transform", "backbone.body", ()),
    ("C", "backbone.body", "backbone.fpn", ()),
    ("P", "backbone.fpn", "rpn.head", ()),
    ("anchors", "rpn.anchor_generator", "rpn", ()),
    ("objectness", "rpn.head.cls_logits", "", ()),
    ("rpn_deltas", "rpn.head.bbox_pred", "", ()),
    ("proposals", "rpn", "roi_heads.box_roi_pool", ("rpn.head", "rpn.anchor_generator")),
    ("box_features", "roi_heads.box_roi_pool", "roi_heads.box_head", ()),
    ("class_logits", "roi_heads.box_predictor.cls_score", "", ()),
    ("box_deltas", "roi_heads.box_predictor.bbox_pred", "", ()),
    ("detections", "roi_heads", "", ("roi_heads.box_roi_pool", "roi_heads.box_head", "roi_heads.box_predictor",
                                     "roi_heads.mask_roi_pool", "roi_heads.mask_head", "roi_heads.mask_predictor")),
    ("mask_features", "roi_heads.mask_roi_pool", "roi_heads.mask_head", ()),
    ("mask_logits", "roi_heads.mask_predictor.mask_fcn_logits", "", ()),
)


def boundary_tensors(g: Graph) -> dict:
    """Stage group -> candidate tensor names, in producer order. Which candidate is which (e.g. the detections' boxes,
    scores and labels) is decided from their runtime shapes and dtypes (`onnx_run.stage_arrays`); `resized` is the
    resized image before padding (the Pad node's input in the transform), `outputs` the graph outputs."""
    found = {group: g.crossing(inside, into, exclude) for group, inside, into, exclude in BOUNDARIES}
    pads = g.nodes_in("transform", "Pad")
    found["resized"] = [pads[-1].input[0]] if pads else []
    found["outputs"] = list(g.output_names)
    return {k: v for k, v in found.items() if v}


def transform_sizes(g: Graph) -> dict:
    """Constants of torchvision's GeneralizedRCNNTransform as the export stored them (transform.py
    `_resize_image_and_masks`): 'min_size' and 'max_size' are the scalars multiplied with 1 / min(h, w) and
    1 / max(h, w); 'image_size' the (h, w) baked in when the exporter traced the input's shape as a constant
    (torchvision's scale = min(min_size / min(h, w), max_size / max(h, w)) is computed from it)."""
    out = {}
    for node in g.nodes_in("transform"):
        if node.op_type in ("ReduceMin", "ReduceMax") and g.is_constant(node.input[0]):
            v = g.constant(node.input[0])
            if v is not None and v.ndim == 1 and v.size == 2 and np.issubdtype(v.dtype, np.integer):
                out["image_size"] = tuple(int(x) for x in v)
        if node.op_type != "Mul":
            continue
        consts = [g.constant(i) for i in node.input if g.is_constant(i)]
        other = [i for i in node.input if not g.is_constant(i)]
        if len(consts) != 1 or consts[0].size != 1 or len(other) != 1:
            continue
        reduce = _upstream_op(g, other[0], ("ReduceMin", "ReduceMax"), depth=3)
        if reduce is not None:
            out["min_size" if reduce == "ReduceMin" else "max_size"] = float(consts[0].reshape(()))
    return out


def _upstream_op(g: Graph, tensor: str, ops: tuple, depth: int):
    """The first op of `ops` met walking up the first inputs from `tensor`, at most `depth` nodes up."""
    for _ in range(depth):
        node = g.producer.get(g.source(tensor))
        if node is None:
            return None
        if node.op_type in ops:
            return node.op_type
        tensor = node.input[0]
    return None


def cell_anchors(g: Graph) -> list:
    """The per-level base anchors (A, 4) as x1, y1, x2, y2 around (0, 0), finest level first: the constant operand
    of each Add in `rpn.anchor_generator` (torchvision AnchorGenerator.grid_anchors: shifts + base anchors)."""
    found = []
    for node in g.nodes_in("rpn.anchor_generator", "Add"):
        for i in node.input:
            v = g.constant(i) if g.is_constant(i) else None
            if v is not None and v.dtype.kind == "f" and v.ndim >= 2 and v.shape[-1] == 4 and v.size > 4:
                found.append(v.reshape(-1, 4))
    return found
