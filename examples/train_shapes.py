"""Train the shipped demo model on synthetic shapes with torchvision, export it for minimaskrcnn, evaluate both.

    python examples/train_shapes.py                        # train (<= --minutes), export minimaskrcnn/demo/data/...npz
    python examples/train_shapes.py --evaluate 200 --seed 1000          # evaluate the shipped .npz
    python examples/train_shapes.py --evaluate 200 --seed 1000 --weights /tmp/minimaskrcnn_shapes/shapes_maskrcnn.pth

torch and torchvision are needed here only: training is the one thing minimaskrcnn leaves to them. The model is a
small torchvision Mask R-CNN that minimaskrcnn's `Config` describes (`SHAPES_CONFIG`):
- ResNet-18 body (plain BatchNorm2d, trained from scratch: no pretrained weights offline), stages layer1..layer3
  feeding a 64-channel FPN (strides 4, 8, 16 and the max-pool level at 32);
- anchors 16, 32, 64, 128 px (one size per level, ratios 0.5, 1, 2) for shapes of 24..96 px in 256 px images;
- box head: two fully connected layers of 256 (TwoMLPHead(64*7*7, 256)), FastRCNNPredictor(256, 4);
- mask head: four 3x3 convolutions of 64 channels, MaskRCNNPredictor(64, 256, 4) (minimaskrcnn's layout fixes the
  predictor's upsampling width at torchvision's 256);
- the 256 x 256 images are resized to 192 px (Config.min_size 192, max_size 288) before the network: 0.56x the
  pixels of 256, which matters on 2 CPU cores; 500 proposals per level and 300 in all at test time.
4,048,871 parameters, 8.2 MB as stored (float16 weights).

Training data is `minimaskrcnn.demo.shapes` with --seed (default 0): image i of step s is make_sample(seed, s * batch + i),
new images at every step, never repeated. Evaluation defaults to seed 1000, which training does not use unless
told to. Optimiser: SGD with momentum, linear warm-up then cosine decay, scheduled on progress = max(step / --steps,
elapsed / --minutes), so a run ends within --minutes whatever the machine (and, when --steps binds, is deterministic).
On 2 idle cores a step of 4 images takes about 0.4-0.7 s; on a machine shared with other jobs, use --threads 1.

The shipped minimaskrcnn/demo/data/shapes_maskrcnn.npz came from
    python examples/train_shapes.py --threads 1 --minutes 40 --steps 3000
on a 2-core machine shared with other jobs: the time limit bound, at 1712 steps (6848 images); the default
--steps 1800 gives about the same training, bound by steps (so deterministic) on an idle machine.
On 200 images of seed 1000 it measured (--evaluate 200 --seed 1000): box AP@0.5 0.987, mask AP@0.5 0.985, the same
for torchvision and minimaskrcnn; parity 1986 of 1986 detections matched, max box diff 9.2e-5 px, max score diff
3.1e-6, every matched mask with IoU >= 0.97 (2026-12-02, torch 2.14.1, torchvision 0.29.1).

Export: BatchNorm in eval mode (running statistics, eps 1e-5), tensors of 2 or more dimensions (convolution and
linear weights) stored as float16, 1-d tensors (biases, BatchNorm) as float32, through `weights_convert.convert`
with the Config fields weights cannot tell (anchors, transform sizes, proposal counts) and the class names.
The float32 torch checkpoint (.pth) stays outside the package: --checkpoint, default under /tmp.

Evaluation (--evaluate N): torchvision's model is rebuilt with `build_torchvision_model(config)` and loaded with the
very arrays of the .npz cast to float32, so both implementations run identical weights; both segment the same N
fresh images; printed: box and mask AP@0.5 of each (`minimaskrcnn.crosscheck.evaluate`) and the parity figures between them.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

# Passive OpenMP waiting, set before torch loads its OpenMP runtime: on a machine shared with other jobs, spinning
# threads made a 2-thread training step 4-5x slower than a 1-thread one (measured); passive waiting removes that.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minimaskrcnn.config import Config  # noqa: E402
from minimaskrcnn.demo.shapes import CLASS_NAMES, MODEL_FILE, make_sample  # noqa: E402

DEFAULT_OUT = ROOT / "minimaskrcnn" / "demo" / "data" / MODEL_FILE    # the shipped model (shapes.shipped_model_path)
DEFAULT_CHECKPOINT = Path(tempfile.gettempdir()) / "minimaskrcnn_shapes" / "shapes_maskrcnn.pth"
EVAL_SEED = 1000
IMAGE_SIZE = 256                # the images: 256 x 256
NETWORK_SIZE = 192              # what the network sees (Config.min_size): a 256 px image is resized to 192

SHAPES_CONFIG = Config(
    resnet_depth=18, returned_layers=(1, 2, 3), fpn_channels=64,
    anchor_sizes=((16,), (32,), (64,), (128,)), aspect_ratios=(0.5, 1.0, 2.0),
    rpn_pre_nms_top_n=500, rpn_post_nms_top_n=300,
    representation_size=256, mask_head_layers=(64, 64, 64, 64),
    num_classes=len(CLASS_NAMES), class_names=CLASS_NAMES,
    min_size=NETWORK_SIZE, max_size=NETWORK_SIZE * 3 // 2, bn_eps=1e-5)
# Config fields the weights do not determine: passed to weights_convert.convert as overrides
NOT_IN_WEIGHTS = ("anchor_sizes", "aspect_ratios", "rpn_pre_nms_top_n", "rpn_post_nms_top_n", "min_size",
                  "max_size")

# training-only settings (torchvision MaskRCNN keyword arguments; inference does not see them)
TRAIN_SETTINGS = dict(rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500, box_batch_size_per_image=128)


# --- the torchvision model --------------------------------------------------------------------------------------------

def build_torchvision_model(cfg: Config = SHAPES_CONFIG, **train_settings):
    """A torchvision MaskRCNN with the architecture and inference constants of `cfg` (ResNet-FPN v1 design with
    BasicBlock or Bottleneck bodies, any returned stages, FPN width, box and mask head sizes), randomly initialised."""
    from torchvision.models import resnet
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    if cfg.fpn_norm or cfg.rpn_conv_depth != 1 or cfg.box_head_convs or cfg.mask_head_norm or not cfg.masks:
        raise ValueError("build_torchvision_model builds the v1 Mask R-CNN design only")
    body = getattr(resnet, f"resnet{cfg.resnet_depth}")(weights=None, norm_layer=nn.BatchNorm2d)
    expansion = 4 if cfg.resnet_depth >= 50 else 1
    layers = list(cfg.returned_layers)
    backbone = BackboneWithFPN(body, {f"layer{k}": str(i) for i, k in enumerate(layers)},
                               [64 * 2 ** (k - 1) * expansion for k in layers], cfg.fpn_channels)
    names = [str(i) for i in range(len(layers))]
    c, k = cfg.fpn_channels, cfg.num_classes
    levels = len(layers) + 1                                                # + the max-pool level
    anchors = AnchorGenerator(tuple(tuple(s) for s in cfg.anchor_sizes), (tuple(cfg.aspect_ratios),) * levels)
    model = MaskRCNN(
        backbone, num_classes=None, min_size=cfg.min_size, max_size=cfg.max_size, image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std), rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n,
        rpn_nms_thresh=cfg.rpn_nms_thresh, rpn_score_thresh=cfg.rpn_score_thresh,
        box_roi_pool=MultiScaleRoIAlign(names, cfg.box_roi_size, cfg.sampling_ratio),
        box_head=TwoMLPHead(c * cfg.box_roi_size ** 2, cfg.representation_size),
        box_predictor=FastRCNNPredictor(cfg.representation_size, k),
        box_score_thresh=cfg.box_score_thresh, box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.box_detections_per_img, bbox_reg_weights=tuple(cfg.bbox_reg_weights),
        mask_roi_pool=MultiScaleRoIAlign(names, cfg.mask_roi_size, cfg.sampling_ratio),
        mask_head=MaskRCNNHeads(c, list(cfg.mask_head_layers), 1),
        mask_predictor=MaskRCNNPredictor(cfg.mask_head_layers[-1], 256, k),
        **train_settings)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = cfg.bn_eps
    return model


def torchvision_from_npz(path):
    """(torchvision model in eval mode, Config) with the arrays of a converted .npz, cast to float32."""
    from weights_convert import read_npz
    cfg, arrays = read_npz(path)
    model = build_torchvision_model(cfg)
    state = {key: torch.from_numpy(np.asarray(a, np.float32)) for key, a in arrays.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path}: does not fit the torchvision model: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}")
    return model.eval(), cfg


# --- data -------------------------------------------------------------------------------------------------------------

def to_tensor(image: np.ndarray):
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1], exactly as minimaskrcnn's image_io.to_network_input."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), np.float32) / np.float32(255))


def training_batch(seed: int, step: int, batch: int):
    samples = [make_sample(seed, step * batch + i, IMAGE_SIZE, IMAGE_SIZE) for i in range(batch)]
    images = [to_tensor(s.image) for s in samples]
    targets = [{"boxes": torch.from_numpy(s.boxes), "labels": torch.from_numpy(s.labels),
                "masks": torch.from_numpy(s.masks.astype(np.uint8))} for s in samples]
    return images, targets


# --- training ---------------------------------------------------------------------------------------------------------

def learning_rate(progress: float, base: float, warmup: float) -> float:
    """Linear warm-up over the first `warmup` of the run, then cosine decay to 0."""
    if progress < warmup:
        return base * (0.001 + 0.999 * progress / warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min((progress - warmup) / (1.0 - warmup), 1.0)))


def train(args) -> nn.Module:
    torch.manual_seed(args.seed)
    model = build_torchvision_model(SHAPES_CONFIG, **TRAIN_SETTINGS)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    print(f"{n_params:,} parameters; training up to {args.steps} steps of {args.batch} images or "
          f"{args.minutes:g} minutes, seed {args.seed}", flush=True)
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    start, step, running = time.monotonic(), 0, {}
    while True:
        progress = max(step / args.steps, (time.monotonic() - start) / (60 * args.minutes))
        if progress >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = learning_rate(progress, args.lr, args.warmup)
        images, targets = training_batch(args.seed, step, args.batch)
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: loss is {loss.item()}; lower --lr")
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        for key, v in losses.items():
            running[key] = 0.95 * running.get(key, v.item()) + 0.05 * v.item()
        step += 1
        if step % args.log_every == 0:
            elapsed = time.monotonic() - start
            terms = " ".join(f"{key.replace('loss_', '')} {v:.3f}" for key, v in running.items())
            print(f"step {step} {elapsed / 60:.1f} min lr {opt.param_groups[0]['lr']:.4f} "
                  f"loss {sum(running.values()):.3f} ({terms})", flush=True)
    print(f"trained {step} steps ({step * args.batch} images) in {(time.monotonic() - start) / 60:.1f} min",
          flush=True)
    return model.eval()


def export(model: nn.Module, out, float16: bool = True) -> Path:
    """Write the eval-mode state dict to `out` (.npz) through weights_convert, float16 for tensors of ndim >= 2."""
    from weights_convert import convert
    state = {}
    for key, v in model.state_dict().items():
        v = v.detach()
        if v.is_floating_point():
            v = v.half() if float16 and v.ndim >= 2 else v.float()
            if float16 and v.ndim >= 2 and not torch.isfinite(v).all():
                raise OverflowError(f"{key} does not fit in float16")
        state[key] = v
    with tempfile.TemporaryDirectory() as tmp:
        pth = Path(tmp) / "shapes_maskrcnn.pth"
        torch.save(state, pth)
        out = convert(pth, out, class_names=CLASS_NAMES, source_name="shapes_maskrcnn.pth",
                      overrides={f: getattr(SHAPES_CONFIG, f) for f in NOT_IN_WEIGHTS})
    from weights_convert import read_npz
    cfg, _ = read_npz(out)
    if cfg != SHAPES_CONFIG:
        raise AssertionError(f"the exported config differs from SHAPES_CONFIG: {cfg}")
    return Path(out)


# --- evaluation -------------------------------------------------------------------------------------------------------

def evaluate(weights, n: int, seed: int, threads: int = 2, log=print) -> dict:
    """Box / mask AP@0.5 of torchvision and minimaskrcnn on `n` images of set `seed`, and their parity.

    weights: a converted .npz, or a training .pth (exported to a temporary float32 .npz first, so that both
    implementations run the very same weights). Returns {"torchvision": {"box": APResult, "mask": APResult},
    "minimaskrcnn": {...}, "parity": MatchStats, "seconds": {...}}.
    """
    import minimaskrcnn
    from minimaskrcnn.crosscheck.evaluate import average_precision, parity

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(weights)
        if path.suffix.lower() != ".npz":
            model = build_torchvision_model(SHAPES_CONFIG)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            path = export(model.eval(), Path(tmp) / "weights.npz", float16=False)
        tv_model, cfg = torchvision_from_npz(path)
        ours = minimaskrcnn.load(path)
    gts, tv_dets, our_dets = [], [], []
    seconds = {"torchvision": 0.0, "minimaskrcnn": 0.0}
    for i in range(n):
        sample = make_sample(seed, i, IMAGE_SIZE, IMAGE_SIZE)
        x = to_tensor(sample.image)                                          # (3, H, W)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = tv_model([x])[0]
        t1 = time.perf_counter()
        det = ours.predict(x.numpy().transpose(1, 2, 0))                     # the same float32 input
        t2 = time.perf_counter()
        seconds["torchvision"] += t1 - t0
        seconds["minimaskrcnn"] += t2 - t1
        gts.append(sample)
        tv_dets.append({"boxes": out["boxes"].numpy(), "labels": out["labels"].numpy(),
                        "scores": out["scores"].numpy(), "masks": out["masks"][:, 0].numpy()})
        our_dets.append(det)
        if log and (i + 1) % 25 == 0:
            log(f"  {i + 1}/{n} images", flush=True)
    result = {name: {kind: average_precision(gts, dets, kind) for kind in ("box", "mask")}
              for name, dets in (("torchvision", tv_dets), ("minimaskrcnn", our_dets))}
    result["parity"] = parity(tv_dets, our_dets)
    result["seconds"] = seconds
    result["instances"] = sum(len(g) for g in gts)
    return result


def report(result: dict, n: int, seed: int) -> str:
    names = CLASS_NAMES
    lines = [f"{n} images of seed {seed}, {result['instances']} instances",
             f"{'':14}{'box AP@0.5':>12}{'mask AP@0.5':>13}   mask AP@0.5 per class"]
    for impl in ("torchvision", "minimaskrcnn"):
        box, mask = result[impl]["box"], result[impl]["mask"]
        per = ", ".join(f"{names[k]} {v:.4f}" for k, v in mask.per_class.items())
        lines.append(f"{impl:14}{box.ap:12.4f}{mask.ap:13.4f}   {per}")
    p = result["parity"]
    lines.append(f"parity: {p.summary()}")
    lines.append(f"seconds per image: torchvision {result['seconds']['torchvision'] / n:.3f}, "
                 f"minimaskrcnn {result['seconds']['minimaskrcnn'] / n:.3f}")
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="training time limit (default 30)")
    p.add_argument("--steps", type=int, default=1800, help="training steps (default 1800)")
    p.add_argument("--batch", type=int, default=4, help="images per step (default 4)")
    p.add_argument("--lr", type=float, default=0.02, help="peak learning rate (default 0.02)")
    p.add_argument("--warmup", type=float, default=0.05, help="warm-up fraction of the run (default 0.05)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"data seed: training default 0, evaluation default {EVAL_SEED}")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="exported .npz (default the package's data file)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="float32 torch checkpoint to keep")
    p.add_argument("--float32", action="store_true", help="export float32 instead of float16 weights")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--evaluate", type=int, metavar="N", help="evaluate on N fresh images instead of training")
    p.add_argument("--weights", help="weights to evaluate (.npz or .pth; default --out)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.evaluate:
        seed = EVAL_SEED if args.seed is None else args.seed
        result = evaluate(args.weights or args.out, args.evaluate, seed, args.threads)
        print(report(result, args.evaluate, seed))
        return 0
    args.seed = 0 if args.seed is None else args.seed
    model = train(args)
    Path(args.checkpoint).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.checkpoint)
    out = export(model, args.out, float16=not args.float32)
    print(f"checkpoint {args.checkpoint}; exported {out} ({os.path.getsize(out) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
