"""Test helpers for video: small synthetic frames, hand-made detections, writing a clip. Not a test module."""
import numpy as np

from minimaskrcnn.config import COCO_CATEGORIES
from minimaskrcnn.detections import Detections
from minimaskrcnn.io import video


def frames(n, h=48, w=64):
    """n smooth, distinct frames (compress well, survive lossy codecs)."""
    y, x = np.mgrid[:h, :w]
    return [np.stack([(x * 3 + 10 * i) % 256, (y * 4) % 256, np.full_like(x, 20 * i % 256)], axis=2).astype(np.uint8)
            for i in range(n)]


def fixed_detections(image):
    h, w = image.shape[:2]
    masks = np.zeros((1, h, w), np.float32)
    masks[0, 10:30, 20:40] = 0.9
    return Detections(np.array([[20, 10, 40, 30]], np.float32), np.array([1], np.int64),
                      np.array([0.8], np.float32), masks, COCO_CATEGORIES, (h, w))


def write(path, frames, fps):
    with video.VideoWriter(path, fps) as wr:
        for f in frames:
            wr.write(f, duration=1 / fps)
