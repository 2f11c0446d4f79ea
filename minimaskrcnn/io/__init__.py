"""Files in and out of a run (the network never imports this package).

Modules, in reading order:
    images.py   the image files of a run: files, folders, glob patterns (reading one image: `minimaskrcnn.image`)
    video.py    video codecs: frames with timestamps in, frames out (GIF by Pillow, everything else by PyAV)
    files.py    PNG and JSON written atomically, never over an input; unique output name stems
    coco.py     COCO results entries and their compressed RLE masks, bit-identical to pycocotools'
    journal.py  the per-image journal of a `segment` run in its output folder, for `segment --resume`
"""
