"""The weights of an ONNX export as a torchvision state dict, its Config, and the check against original weights.

Initializers are mapped to state-dict names through the nodes that consume them (`onnx_graph.scope`): the weight of
the Conv `/backbone/body/layer1/layer1.0/conv1/Conv` is `backbone.body.layer1.0.conv1.weight`, whatever the
initializer is called. Three forms of BatchNorm occur, all brought to the one minimaskrcnn's loaders take
(`stages/*.load_*` call `nn.layers.load_conv`, which folds `bn.*` into the conv with `Config.bn_eps`):

* folded by the exporter (eval-mode `nn.BatchNorm2d`, constant folding on): the Conv carries `W * s` and
  `(b - mean) * s + beta` under an anonymous name (`onnx::Conv_2727`); it is given to minimaskrcnn as that conv with
  an identity BatchNorm (weight 1, bias 0, mean 0, var 1) and `bn_eps = 0`, so folding it again changes no bit;
* a `BatchNormalization` node after the Conv (exported without constant folding): folded here with minimaskrcnn's
  own `fold_batchnorm` and the node's epsilon, then as above;
* `FrozenBatchNorm2d` (torchvision's trained v1 models) as `Mul` by a per-channel scale and `Add` of a shift in the
  BN's scope: folded here (`W * scale`, `b * scale + shift`), then as above.

The BN module of a folded conv is named by torchvision's convention: `X.convK` -> `X.bnK` (ResNet blocks),
`X.N` -> `X.{N+1}` (`downsample.0`/`.1`, `Conv2dNormActivation` `.0`/`.1`).

Shape glossary: C' output channels, C input channels, k kernel side.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from minimaskrcnn.config import Config
from minimaskrcnn.nn.convolution import fold_batchnorm

from .onnx_graph import Graph, cell_anchors, scope, transform_sizes

U = 2.0 ** -24          # unit roundoff of float32 (half an ulp of 1): the bound of one correctly rounded operation


@dataclass
class Recovered:
    """The export's weights under torchvision names, and how each conv's BatchNorm appeared in the graph."""

    state_dict: dict = field(default_factory=dict)   # key -> float32 array, BN folded, identity BN keys added
    fold: dict = field(default_factory=dict)         # conv module -> ("exporter" | "node" | "frozen", BN module)
    raw: dict = field(default_factory=dict)          # state-dict key -> the array exactly as stored in the graph
    sources: dict = field(default_factory=dict)      # state-dict key -> initializer name
    identity_bn: set = field(default_factory=set)    # keys of the identity BatchNorms added here


def bn_name(conv_module: str) -> str:
    m = re.fullmatch(r"(.*)\.conv(\d+)", conv_module)
    if m:
        return f"{m.group(1)}.bn{m.group(2)}"
    m = re.fullmatch(r"(.*)\.(\d+)", conv_module)
    if m:
        return f"{m.group(1)}.{int(m.group(2)) + 1}"
    raise ValueError(f"the convolution {conv_module} has its BatchNorm folded in, and no torchvision BatchNorm name "
                     f"follows from its name")


def _only_consumer(g: Graph, tensor: str, op: str):
    users = g.consumers.get(tensor, [])
    return users[0] if len(users) == 1 and users[0].op_type == op else None


def _per_channel_constant(g: Graph, node, channels: int):
    """(constant operand, other input) of a binary node whose constant is a per-channel (1, C', 1, 1) array."""
    for i, j in ((0, 1), (1, 0)):
        v = g.constant(node.input[i]) if g.is_constant(node.input[i]) else None
        if v is not None and v.size == channels and not g.is_constant(node.input[j]):
            return v.reshape(channels).astype(np.float32)
    return None


def recover_state_dict(g: Graph) -> Recovered:
    """The torchvision state dict the export's Conv, Gemm, ConvTranspose and BatchNormalization nodes consume."""
    rec = Recovered()
    for node in g.nodes:
        if node.op_type not in ("Conv", "Gemm", "ConvTranspose"):
            continue
        module = scope(node.name)
        if not module or not g.is_constant(node.input[1]):
            continue
        w = g.constant(node.input[1]).astype(np.float32)                     # (C', C, k, k) / (out, in)
        b = g.constant(node.input[2]).astype(np.float32) if len(node.input) > 2 and node.input[2] else None
        src = g.source(node.input[1])
        if f"{module}.weight" in rec.sources:                                 # a module called again (RPN head)
            if rec.sources[f"{module}.weight"] != src:
                raise ValueError(f"{g.path}: module {module} is called with two different weights "
                                 f"({rec.sources[f'{module}.weight']}, {src})")
            continue
        if node.op_type == "Gemm":
            attrs = {a.name: a.i for a in node.attribute if a.name in ("transA", "transB")}
            if attrs.get("transA", 0):
                raise ValueError(f"{g.path}: {node.name}: a Gemm with transA is no torch Linear")
            w = w if attrs.get("transB", 0) else np.ascontiguousarray(w.T)      # torch Linear stores (out, in)
        rec.sources[f"{module}.weight"] = src
        rec.raw[f"{module}.weight"] = w
        if b is not None:
            rec.sources[f"{module}.bias"] = g.source(node.input[2])
            rec.raw[f"{module}.bias"] = b
        if node.op_type == "Conv":
            w, b = _fold(g, node, module, w, b, rec)
        rec.state_dict[f"{module}.weight"] = w
        if b is not None:
            rec.state_dict[f"{module}.bias"] = b
    for conv, (_, bn) in rec.fold.items():
        c = rec.state_dict[f"{conv}.weight"].shape[0]
        for key, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            rec.state_dict[f"{bn}.{key}"] = np.full(c, value, np.float32)
            rec.identity_bn.add(f"{bn}.{key}")
    return rec


def _fold(g: Graph, node, module: str, w, b, rec: Recovered):
    """The conv's weights with whatever BatchNorm the graph applies after it folded in; records `rec.fold`."""
    c = w.shape[0]
    out = node.output[0]
    bn_node = _only_consumer(g, out, "BatchNormalization")
    if bn_node is not None and all(g.is_constant(i) for i in bn_node.input[1:5]):
        bn = scope(bn_node.name) or bn_name(module)
        eps = next((a.f for a in bn_node.attribute if a.name == "epsilon"), 1e-5)   # ONNX default
        params = [g.constant(i) for i in bn_node.input[1:5]]                 # scale, B, mean, var: (C',) each
        for key, v, i in zip(("weight", "bias", "running_mean", "running_var"), params, bn_node.input[1:5]):
            rec.raw[f"{bn}.{key}"], rec.sources[f"{bn}.{key}"] = v, g.source(i)
        rec.fold[module] = ("node", bn)
        rec.raw[f"{bn}.eps"] = np.float64(eps)
        return fold_batchnorm(w, b, *params, eps)
    mul = _only_consumer(g, out, "Mul")
    add = _only_consumer(g, mul.output[0], "Add") if mul is not None else None
    if mul is not None and add is not None and scope(mul.name) not in ("", module) and scope(add.name) == scope(
            mul.name):
        scale, shift = _per_channel_constant(g, mul, c), _per_channel_constant(g, add, c)
        if scale is not None and shift is not None:
            bn = scope(mul.name)
            rec.raw[f"{bn}.scale"], rec.raw[f"{bn}.shift"] = scale, shift
            rec.fold[module] = ("frozen", bn)
            s = scale.astype(np.float64)                                     # (C',)
            w64 = w.astype(np.float64) * s.reshape(-1, 1, 1, 1)              # (C', C, k, k)
            b64 = (0.0 if b is None else b.astype(np.float64)) * s + shift
            return w64.astype(np.float32), b64.astype(np.float32)
    if g.source(node.input[1]) != f"{module}.weight":
        rec.fold[module] = ("exporter", bn_name(module))
    return w, b


def infer_onnx_config(g: Graph, rec: Recovered) -> Config:
    """The Config of the export: the architecture from its state dict (`weights_convert.infer_config`), the
    transform's min_size / max_size and the anchor sizes from the graph's constants, bn_eps 0 (every BatchNorm here
    is the identity). The anchor sizes are the widths of each level's square base anchors (aspect ratio 1:
    torchvision rounds w = size * sqrt(1/1) to itself); the aspect ratios are torchvision's when their count fits."""
    from weights_convert.errors import CheckpointError
    from weights_convert.infer import infer_config
    from weights_convert.layout import check_state_dict
    sizes = transform_sizes(g)
    base = Config(bn_eps=0.0)
    if "min_size" in sizes and "max_size" in sizes:
        base = base.replace(min_size=int(round(sizes["min_size"])), max_size=int(round(sizes["max_size"])))
    cells = cell_anchors(g)
    if cells:
        per_level = tuple(tuple(int(round(a[2] - a[0])) for a in c if a[2] - a[0] == a[3] - a[1]) for c in cells)
        if all(per_level) and all(len(c) == len(p) * len(base.aspect_ratios) for c, p in zip(cells, per_level)):
            base = base.replace(anchor_sizes=per_level)
        else:
            raise ValueError(f"{g.path}: base anchors of {[len(c) for c in cells]} per level do not follow "
                             f"torchvision's aspect ratios {base.aspect_ratios}")
    try:
        cfg = infer_config(rec.state_dict, base)
        # a folded conv has a bias where torchvision's has none (load_conv accepts one before a BatchNorm)
        layout = {k: v for k, v in rec.state_dict.items() if not (k.endswith(".bias") and k[:-5] in rec.fold)}
        check_state_dict(cfg, layout, what=f"the weights of {g.path}")
    except CheckpointError as e:
        raise ValueError(f"{g.path}: not a torchvision R-CNN export: {e}") from None
    return cfg


# --- --weights: did the export store the original weights? ---------------------------------------------------------

@dataclass
class WeightCheck:
    key: str
    how: str            # "bitwise", or "BN folded (bound ...)"
    max_abs: float
    ok: bool


def check_weights(rec: Recovered, original: dict, bn_eps: float) -> list:
    """Compare the export's weights with the original state dict `original` (torchvision keys, BN eps `bn_eps`).

    Unfolded tensors must be bitwise equal. A conv the exporter folded (`W' = W * s`, `b' = (b - mean) * s + beta`,
    `s = gamma / sqrt(var + eps)`, all in float32) is compared with the same fold computed here in float64 and rounded
    once (`fold_batchnorm`), elementwise within a bound derived from float32 rounding (U = 2^-24 per operation):
    s carries at most 3U (add, sqrt, divide), W' at most 4U more from its product, ours U from the final rounding, so
    |dW'| <= 6U |W'| (one U of slack); b' adds U for b - mean, 4U for the product and U for + beta, so
    |db'| <= 6U |(b - mean) s| + 2U |beta| + 2U |b'|. FrozenBatchNorm2d's stored scale `gamma * rsqrt(var + eps)` and
    shift `beta - mean * scale` get the same bounds (3U + U; 5U |mean * scale| + 2U |shift|).
    """
    checks = []
    folded_keys = set()
    for conv, (how, bn) in rec.fold.items():
        if how == "exporter":
            folded_keys |= {f"{conv}.weight", f"{conv}.bias"}
            checks += _check_exporter_fold(rec, original, conv, bn, bn_eps)
        elif how == "frozen":
            checks += _check_frozen(rec, original, bn, bn_eps)
    for key, got in rec.raw.items():
        if key in folded_keys or key.endswith((".scale", ".shift", ".eps")):
            continue
        if key not in original:
            checks.append(WeightCheck(key, "not in the original weights", float("inf"), False))
            continue
        want = np.asarray(original[key], np.float32)
        ok = want.shape == got.shape and np.array_equal(want.view(np.uint32), got.view(np.uint32))
        diff = float(np.abs(want.astype(np.float64) - got).max()) if want.shape == got.shape else float("inf")
        checks.append(WeightCheck(key, "bitwise", diff, ok))
    return checks


def _within(key, got, want, bound, how) -> WeightCheck:
    if got.shape != want.shape:
        return WeightCheck(key, how, float("inf"), False)
    d = np.abs(got.astype(np.float64) - want)
    return WeightCheck(key, how, float(d.max()) if d.size else 0.0, bool(np.all(d <= bound + 1e-38)))


def _check_exporter_fold(rec, original, conv, bn, eps) -> list:
    need = [f"{conv}.weight"] + [f"{bn}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
    missing = [k for k in need if k not in original]
    if missing:
        return [WeightCheck(k, "not in the original weights", float("inf"), False) for k in missing]
    gamma, beta, mean, var = (np.asarray(original[k], np.float64) for k in need[1:])
    bias = original.get(f"{conv}.bias")
    w32, b32 = fold_batchnorm(original[f"{conv}.weight"], bias, gamma, beta, mean, var, eps)
    s = gamma / np.sqrt(var + eps)                                           # (C',)
    t = ((0.0 if bias is None else np.asarray(bias, np.float64)) - mean) * s   # (C',)
    how = "BN folded, within 6U|W'| elementwise"
    out = [_within(f"{conv}.weight", rec.raw[f"{conv}.weight"], w32.astype(np.float64), 6 * U * np.abs(w32), how)]
    if f"{conv}.bias" in rec.raw:
        bound = 6 * U * np.abs(t) + 2 * U * np.abs(beta) + 2 * U * np.abs(b32)
        out.append(_within(f"{conv}.bias", rec.raw[f"{conv}.bias"], b32.astype(np.float64), bound,
                           "BN folded, within 6U|(b-mean)s| + 2U|beta| + 2U|b'|"))
    return out


def _check_frozen(rec, original, bn, eps) -> list:
    need = [f"{bn}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
    if any(k not in original for k in need):
        return [WeightCheck(k, "not in the original weights", float("inf"), False) for k in need if k not in original]
    gamma, beta, mean, var = (np.asarray(original[k], np.float64) for k in need)
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    return [_within(f"{bn}.weight", rec.raw[f"{bn}.scale"], scale, 4 * U * np.abs(scale) + 1e-38,
                    "FrozenBatchNorm2d scale, within 4U"),
            _within(f"{bn}.bias", rec.raw[f"{bn}.shift"], shift, 5 * U * np.abs(mean * scale) + 2 * U * np.abs(shift),
                    "FrozenBatchNorm2d shift, within 5U|mean s| + 2U|shift|")]


def read_original(path) -> tuple[dict, float]:
    """(state dict, BatchNorm eps) of the weights an export was made from: a converted `.npz` (its config's eps) or a
    torchvision `.pth` read without torch (`weights_convert`; eps 0 for the COCO v1 checkpoints, else 1e-5, as
    `weights_convert.default_bn_eps`). No Config is inferred: the architecture is the export's."""
    import hashlib
    from weights_convert import CheckpointError, default_bn_eps, legacy_renames, read_npz, read_state_dict
    from weights_convert.reader import read_bytes
    try:
        if str(path).lower().endswith(".npz"):
            cfg, sd = read_npz(path)
            return dict(sd), cfg.bn_eps
        data = read_bytes(path)
        raw = read_state_dict(data)
        return dict(legacy_renames(raw, getattr(raw, "_metadata", None))), \
            default_bn_eps(hashlib.sha256(data).hexdigest())
    except CheckpointError as e:
        raise ValueError(f"--weights {path}: {' '.join(str(e).split())}") from None
