"""Weights by name or path: official names, download with a sha256 check, the cache of converted files.

Modules, in reading order:
    names.py      the official torchvision COCO checkpoints: names, file names with their sha256 prefixes, base URL
    download.py   streaming a checkpoint to disk, verified, atomically; one-line `WeightsError`s
    cache.py      `resolve_weights` / `load_weights`: name, .pth or .npz -> (Config, state dict), converted once

Reading checkpoints themselves (without torch) is the `weights_convert` package.
"""
from minimaskrcnn.weights.cache import load_matterport_weights, load_weights, resolve_weights, weights_family
from minimaskrcnn.weights.download import WeightsError

__all__ = ["load_weights", "load_matterport_weights", "resolve_weights", "weights_family", "WeightsError"]
