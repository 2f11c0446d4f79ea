"""Calibrated random torchvision models and structured test images: the references every parity test uses.

Raw `weights=None` models are degenerate (identity BatchNorm statistics let activations grow to saturation; facts
§10.2), so every model is made well-conditioned on the very image it will be tested on, following facts §10.3:

1. build under `torch.manual_seed(seed)` with `weights=None, weights_backbone=None`;
2. BatchNorm calibration: reset the running statistics, momentum None (cumulative average), only the BN modules in
   train mode, one forward of the image; back to eval; then randomize the BN affine parameters mildly
   (weight ~ U(0.7, 1.3), bias ~ N(0, 0.1)) so that folding a non-trivial BN is exercised;
3. rescale the head output layers one after another in forward order, to the target output stds of `TARGET_STDS`,
   measured with forward hooks on the same image.

The backbone does not change after step 2, so step 3 reuses one backbone forward, and it measures sibling layers
(RPN cls_logits / bbox_pred, box cls_score / bbox_pred) in one pass: neither changes the other's output, so this
equals rescaling them one after another. A calibration costs two backbone forwards plus three passes through the
heads. Results are cached on disk (`CACHE_DIR`), keyed by everything that
determines them, including the source of the recipe's functions, so a stale entry can never be used for different
inputs; least recently used entries beyond CACHE_MAX_BYTES are deleted.

A FrozenBatchNorm2d (the generic ResNet-18 model below; torchvision's `resnet_fpn_backbone` default) has no train
mode: its statistics are set to those of its input by a forward pre-hook during the same single forward.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

import disk_cache
import oracle
from minimaskrcnn.config import (FASTERRCNN_RESNET50_FPN, FASTERRCNN_RESNET50_FPN_V2, MASKRCNN_RESNET50_FPN,
                                 MASKRCNN_RESNET50_FPN_V2, Config)

TORCHVISION_ARCHS = ("maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2",
                     "fasterrcnn_resnet50_fpn_v2")
SMALL_ARCH = "maskrcnn_resnet18_fpn_small"  # generic config: BasicBlock, returned_layers (2, 3, 4), 4 classes
ARCHS = TORCHVISION_ARCHS + (SMALL_ARCH,)

# facts §10.3 step 3: (module path, target std of its output), in forward order
TARGET_STDS = (("rpn.head.cls_logits", 1.5), ("rpn.head.bbox_pred", 0.15),
               ("roi_heads.box_predictor.cls_score", 2.5), ("roi_heads.box_predictor.bbox_pred", 0.5),
               ("roi_heads.mask_predictor.mask_fcn_logits", 3.0))
# The stage-parity cases of tests/stages/test_backbone_fpn.py and tests/stages/test_heads.py: (architecture, image source, seed).
# v2 has its own seed so that its body differs from v1's; the 4-class ResNet-18 model saturates its class scores with
# seed 0 (one class wins everywhere), seed 1 passes the sanity checks.
STAGE_CASES = (("maskrcnn_resnet50_fpn", "structured:480x640x0", 0), ("maskrcnn_resnet50_fpn", "dog.jpg", 0),
               ("maskrcnn_resnet50_fpn_v2", "structured:480x640x0", 1), ("maskrcnn_resnet50_fpn_v2", "dog.jpg", 1),
               (SMALL_ARCH, "structured:480x640x3", 1))
CACHE_DIR = Path(tempfile.gettempdir()) / "minimaskrcnn-test-models"
# Least recently used entries beyond this many bytes are deleted (a ResNet-50 entry is ~180 MB).
CACHE_MAX_BYTES = int(os.environ.get("MINIMASKRCNN_TEST_CACHE_BYTES", 8 * 2**30))


# ----------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------

def structured_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth synthetic photo (facts §10.3 point 4): bilinear-upsampled low-resolution noise, random coloured
    rectangles and +-0.02 pixel noise. Returns (h, w, 3) float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0.2, 0.8, (max(2, h // 64 + 2), max(2, w // 64 + 2), 3))   # (h0, w0, 3)
    ys = np.linspace(0, low.shape[0] - 1, h)                                       # bilinear, align-corners
    xs = np.linspace(0, low.shape[1] - 1, w)
    y0, x0 = np.minimum(ys.astype(int), low.shape[0] - 2), np.minimum(xs.astype(int), low.shape[1] - 2)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    img = ((1 - fy) * ((1 - fx) * low[y0][:, x0] + fx * low[y0][:, x0 + 1])
           + fy * ((1 - fx) * low[y0 + 1][:, x0] + fx * low[y0 + 1][:, x0 + 1]))  # (h, w, 3)
    for _ in range(rng.integers(6, 13)):
        rh, rw = rng.integers(h // 10 + 1, h // 2 + 2), rng.integers(w // 10 + 1, w // 2 + 2)
        top, left = rng.integers(0, max(1, h - rh)), rng.integers(0, max(1, w - rw))
        img[top:top + rh, left:left + rw] = rng.uniform(0, 1, 3)
    img += rng.uniform(-0.02, 0.02, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def load_photo(path) -> np.ndarray:
    """An image file as (h, w, 3) float32 in [0, 1] (PIL convert('RGB'), /255)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.float32) / np.float32(255)


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------

def config_for(arch: str, **kwargs) -> Config:
    """The minimaskrcnn Config of `calibrated_model(arch, ..., **kwargs)` (torchvision keyword names)."""
    base = {"maskrcnn_resnet50_fpn": MASKRCNN_RESNET50_FPN, "fasterrcnn_resnet50_fpn": FASTERRCNN_RESNET50_FPN,
            "maskrcnn_resnet50_fpn_v2": MASKRCNN_RESNET50_FPN_V2,
            "fasterrcnn_resnet50_fpn_v2": FASTERRCNN_RESNET50_FPN_V2,
            SMALL_ARCH: Config(resnet_depth=18, returned_layers=(2, 3, 4), anchor_sizes=((64,), (128,), (256,), (512,)),
                               num_classes=4, class_names=("__background__", "class_1", "class_2", "class_3"))}[arch]
    renamed = {"rpn_pre_nms_top_n_test": "rpn_pre_nms_top_n", "rpn_post_nms_top_n_test": "rpn_post_nms_top_n"}
    return base.replace(**{renamed.get(k, k): tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})


def _build(arch: str, seed: int, kwargs: dict):
    torch, tv = oracle.torch(), oracle.torchvision()
    det = tv.models.detection
    torch.manual_seed(seed)
    if arch in TORCHVISION_ARCHS:
        return getattr(det, arch)(weights=None, weights_backbone=None, **kwargs).eval()
    if arch != SMALL_ARCH:
        raise ValueError(f"arch: expected one of {ARCHS}, got {arch!r}")
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign
    body = det.backbone_utils.resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                                  returned_layers=[2, 3, 4])
    names = ["0", "1", "2"]
    return det.MaskRCNN(body, num_classes=4,
                        rpn_anchor_generator=AnchorGenerator(((64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 4),
                        box_roi_pool=MultiScaleRoIAlign(names, 7, 2), mask_roi_pool=MultiScaleRoIAlign(names, 14, 2),
                        **kwargs).eval()


def _image_tensor(image: np.ndarray):
    torch = oracle.torch()
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected (h, w, 3) float32 in [0, 1], got shape {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))      # (3, h, w)


def _measure_stds(model, paths, run) -> dict:
    """std of the outputs of the modules `paths` (all calls pooled, e.g. the RPN head's 5 levels) during run()."""
    torch = oracle.torch()
    outputs = {p: [] for p in paths}
    handles = [model.get_submodule(p).register_forward_hook(
        lambda m, i, o, p=p: outputs[p].append(o.detach().flatten())) for p in paths]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return {p: float(torch.cat(v).std()) if v and sum(len(t) for t in v) > 1 else float("nan")
            for p, v in outputs.items()}


def calibrate_batchnorm(model, run, seed: int) -> None:
    """facts §10.3 step 2 on any module tree: every BatchNorm2d / FrozenBatchNorm2d gets the statistics of its input
    during one call of `run()`, then a mild random affine (weight ~ U(0.7, 1.3), bias ~ N(0, 0.1))."""
    torch, tv = oracle.torch(), oracle.torchvision()
    frozen_type = tv.ops.misc.FrozenBatchNorm2d
    bns = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, frozen_type))]

    def set_to_input_stats(module, args):   # FrozenBatchNorm2d: what one train-mode forward would record
        x = args[0].detach()
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)).clamp_min(1e-6))

    handles = []
    for m in bns:
        if isinstance(m, frozen_type):
            handles.append(m.register_forward_pre_hook(set_to_input_stats))
        else:
            m.reset_running_stats()
            m.momentum = None
            m.train()
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
        for m in bns:
            m.eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.empty_like(m.weight).uniform_(0.7, 1.3, generator=g))
            m.bias.copy_(torch.empty_like(m.bias).normal_(0.0, 0.1, generator=g))


def _calibrate(model, image_t, seed: int) -> None:
    torch = oracle.torch()
    calibrate_batchnorm(model, lambda: model([image_t]), seed)     # step 2
    with torch.no_grad():                   # step 3: the backbone is final, compute it once
        images, _ = model.transform([image_t])
        features = model.backbone(images.tensors)
    state = {}
    rh = model.roi_heads

    def rpn_head():
        model.rpn.head(list(features.values()))

    def box_predictor():
        state["proposals"] = model.rpn(images, features)[0]
        pooled = rh.box_roi_pool(features, state["proposals"], images.image_sizes)
        rh.box_predictor(rh.box_head(pooled))

    def mask_predictor():
        detections = rh(features, state["proposals"], images.image_sizes)[0][0]
        if len(detections["boxes"]) == 0:   # no detection: measure on the best proposals instead
            top = state["proposals"][0][:100]
            rh.mask_predictor(rh.mask_head(rh.mask_roi_pool(features, [top], images.image_sizes)))

    stages = [rpn_head, box_predictor] + ([mask_predictor] if rh.has_mask() else [])
    for run, group in zip(stages, (TARGET_STDS[:2], TARGET_STDS[2:4], TARGET_STDS[4:])):
        stds = _measure_stds(model, [p for p, _ in group], run)
        with torch.no_grad():
            for path, target in group:
                if not np.isfinite(stds[path]) or stds[path] == 0:
                    raise RuntimeError(f"calibration: output of {path} has std {stds[path]}")
                layer = model.get_submodule(path)
                layer.weight.mul_(target / stds[path])
                layer.bias.mul_(target / stds[path])


def _cache_key(arch, image, seed, kwargs) -> str:
    """Everything the calibrated weights depend on, including the source of the functions that compute them (so any
    change to the recipe invalidates the cache, while edits elsewhere in this file do not)."""
    torch, tv = oracle.torch(), oracle.torchvision()
    h = hashlib.sha256()
    for fn in (_build, _image_tensor, calibrate_batchnorm, _measure_stds, _calibrate):
        h.update(inspect.getsource(fn).encode())
    h.update(repr(TARGET_STDS).encode())
    h.update(json.dumps([arch, seed, sorted((k, repr(v)) for k, v in kwargs.items()), torch.__version__,
                         tv.__version__, image.shape, str(image.dtype)]).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def calibrated_model(arch: str, image: np.ndarray, seed: int = 0, **kwargs):
    """A torchvision model of `arch` (one of ARCHS) calibrated on `image` (h, w, 3) float32 in [0, 1], in eval mode.

    kwargs go to the torchvision builder (e.g. box_score_thresh=0.5). Deterministic: calibration runs with one torch
    thread. Cached on disk in CACHE_DIR under a key of (recipe source, arch, seed, kwargs, versions, image bytes).
    """
    torch = oracle.torch()
    image = np.asarray(image, np.float32)
    image_t = _image_tensor(image)
    model = _build(arch, seed, kwargs)
    key = _cache_key(arch, image, seed, kwargs)
    path = CACHE_DIR / f"{arch}-{key[:32]}.pt"
    if path.exists():
        try:
            payload = torch.load(path, weights_only=True)
            if payload["key"] == key:
                model.load_state_dict(payload["state_dict"])
                disk_cache.touch(path)
                return model.eval()
        except Exception:   # a truncated, foreign or concurrently evicted file: recalibrate and overwrite it
            pass
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _calibrate(model, image_t, seed)
    finally:
        torch.set_num_threads(threads)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"key": key, "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)               # atomic: parallel sessions never read a partial file
    disk_cache.evict(CACHE_DIR.glob("*.pt"), CACHE_MAX_BYTES, keep=path)
    return model.eval()


def state_dict_numpy(model) -> dict:
    """The model's state dict as {torchvision key: np.ndarray} (num_batches_tracked dropped)."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def torchvision_stages(model, image: np.ndarray) -> dict:
    """One torchvision forward of `image` with hooks on every network stage; numpy arrays, batch axis dropped:

    input (3, Hp, Wp) normalized padded; C, P: lists of the body / FPN maps (C_l, H_l, W_l) in torchvision's order;
    rpn_objectness / rpn_deltas: per level (A, H_l, W_l) / (4A, H_l, W_l); box_features (K, F, 7, 7);
    class_logits (K, NC); box_regression (K, 4NC); outputs: model's list of dicts; for Mask R-CNN also
    mask_features (N, F, 14, 14), labels (N,), mask_logits (N, NC, 28, 28) (all classes, before selection).
    """
    torch = oracle.torch()
    got, rh = {}, model.roi_heads
    taps = {"body": model.backbone.body, "fpn": model.backbone.fpn, "rpn_head": model.rpn.head,
            "box_features": rh.box_roi_pool, "box_predictor": rh.box_predictor}
    if rh.has_mask():
        taps.update(mask_features=rh.mask_roi_pool, mask_logits=rh.mask_predictor)
    handles = [m.register_forward_hook(lambda m, i, o, name=name: got.__setitem__(name, (i, o)))
               for name, m in taps.items()]
    try:
        with torch.no_grad():
            outputs = model([_image_tensor(image)])
    finally:
        for h in handles:
            h.remove()
    np_ = lambda t: t.detach().numpy()  # noqa: E731
    out = {"input": np_(got["body"][0][0][0]), "C": [np_(v[0]) for v in got["body"][1].values()],
           "P": [np_(v[0]) for v in got["fpn"][1].values()],
           "rpn_objectness": [np_(v[0]) for v in got["rpn_head"][1][0]],
           "rpn_deltas": [np_(v[0]) for v in got["rpn_head"][1][1]],
           "box_features": np_(got["box_features"][1]), "class_logits": np_(got["box_predictor"][1][0]),
           "box_regression": np_(got["box_predictor"][1][1]), "outputs": outputs}
    if rh.has_mask():
        out.update(mask_features=np_(got["mask_features"][1]), mask_logits=np_(got["mask_logits"][1]),
                   labels=np_(outputs[0]["labels"]))
    return out


def image_from_source(source: str) -> np.ndarray:
    """'structured:HxWxSEED' -> structured_image(H, W, SEED); otherwise a file name in shared/images."""
    if source.startswith("structured:"):
        h, w, seed = (int(v) for v in source.split(":", 1)[1].split("x"))
        return structured_image(h, w, seed)
    from conftest import IMAGES
    return load_photo(IMAGES / source)


@functools.lru_cache(maxsize=8)
def reference_case(arch: str, source: str, seed: int = 0):
    """(image, calibrated model, torchvision_stages) for an image source, computed once per test session."""
    image = image_from_source(source)
    model = calibrated_model(arch, image, seed)
    return image, model, torchvision_stages(model, image)


# ----------------------------------------------------------------------------------------------------------------
# Sanity checks (facts §10.3 point 6)
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class SanityReport:
    n_detections: int
    detections_cap: int
    max_score: float
    unique_scores: bool
    n_labels: int
    mask_mid_fraction: float | None     # of pasted mask pixels inside their box: fraction in (0.05, 0.95)
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def sanity_report(model, image: np.ndarray, outputs=None) -> SanityReport:
    """Is this model/image pair well-conditioned enough to test against? `outputs`: model([image]) if already run.

    Checks: at least one detection, max score < 0.999 (no saturation), all scores distinct (no arbitrary order),
    more than one label, and for Mask R-CNN at least 10% of the in-box mask probabilities in (0.05, 0.95).
    `n_detections < detections_cap` is reported but not required (raise box_score_thresh for such a test).
    """
    if outputs is None:
        with oracle.torch().no_grad():
            outputs = model([_image_tensor(image)])
    out = outputs[0]
    scores, labels = out["scores"].numpy(), out["labels"].numpy()
    mid = None
    if "masks" in out and len(scores):
        inside, middle = 0, 0
        for m, box in zip(out["masks"][:, 0].numpy(), out["boxes"].numpy()):
            x1, y1, x2, y2 = np.floor(box[:2]).astype(int).tolist() + np.ceil(box[2:]).astype(int).tolist()
            p = m[max(y1, 0):y2, max(x1, 0):x2]
            inside += p.size
            middle += int(((p > 0.05) & (p < 0.95)).sum())
        mid = middle / max(inside, 1)
    r = SanityReport(len(scores), model.roi_heads.detections_per_img, float(scores.max()) if len(scores) else 0.0,
                     len(np.unique(scores)) == len(scores), len(np.unique(labels)), mid)
    if r.n_detections == 0:
        r.problems.append("no detection")
    if r.max_score >= 0.999:
        r.problems.append(f"max score {r.max_score:.6f} >= 0.999 (saturated)")
    if not r.unique_scores:
        r.problems.append("tied scores (arbitrary order)")
    if r.n_labels <= 1:
        r.problems.append(f"{r.n_labels} distinct label(s)")
    if mid is not None and mid < 0.1:
        r.problems.append(f"only {mid:.1%} of in-box mask probabilities in (0.05, 0.95)")
    return r
