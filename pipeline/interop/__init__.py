"""Mask formats of other tools, in and out: segment-anything's `amg.py` folders and COCO RLE JSON.

`amg` and `coco` convert one frame's SAM-style records (see docs/design.md, "Segmenter") to and from
files; `export` writes a store directory in either format; `importer` turns such files back into
verified stores. Boxes keep segment-anything's convention (XYWH, w = x_max - x_min), in both formats.
"""

FORMATS = ("amg", "coco-rle", "youtube-vis")  # youtube-vis: one JSON for the whole set (interop.youtube_vis)
