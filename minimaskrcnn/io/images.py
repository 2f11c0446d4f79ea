"""Finding the image files of a run: files, folders (optionally recursive) and glob patterns, in order.

Reading one image is `minimaskrcnn.image.read_image` (the public API's input contract).
"""
from __future__ import annotations

import glob
import os

__all__ = ["find_images", "IMAGE_EXTENSIONS"]

# what a folder or a glob pattern contributes; a file named explicitly is tried whatever its extension
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm", ".pnm", ".tga")


def find_images(items, recursive: bool = False) -> tuple:
    """(image paths in order, [(item, why)] for items that give none). Folders: their images sorted by name (and
    subfolders' with `recursive`); glob patterns expanded here too (for shells that don't); duplicates dropped."""
    files, problems, seen = [], [], set()

    def add(path):
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            files.append(path)

    for item in items:
        if os.path.isdir(item):
            found = _folder_images(item, recursive)
            if not found:
                problems.append((item, "no images in this folder" + ("" if recursive else " (try --recursive)")))
            for p in found:
                add(p)
        elif os.path.exists(item):
            add(item)                                                # named explicitly: tried whatever its extension
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=recursive))
            images = [m for m in matches if os.path.isfile(m) and _is_image_name(m)]
            for d in (m for m in matches if os.path.isdir(m)):
                images.extend(_folder_images(d, recursive))
            if not images:
                problems.append((item, "no image matches this pattern"))
            for p in images:
                add(p)
        else:
            problems.append((item, "no such file or directory"))
    return files, problems


def _is_image_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _folder_images(folder: str, recursive: bool) -> list:
    if not recursive:
        return [os.path.join(folder, n) for n in sorted(os.listdir(folder))
                if _is_image_name(n) and os.path.isfile(os.path.join(folder, n))]
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        found.extend(os.path.join(root, n) for n in sorted(names) if _is_image_name(n))
    return found
