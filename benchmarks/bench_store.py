"""Mask store: bytes per frame and time to read one frame, ours against candidate encodings and the
public reference formats (SAM amg.py's PNG folders + metadata.csv; COCO RLE JSON per frame).

Records: the weight-free graph segmenter on real Sintel and judo frames, plus 6 large overlapping
masks per frame (dilated unions of two records), the masks SAM produces that crop coding gains
least on. Reading a frame means decoding every mask to (N, H, W) bool plus its metadata.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import h5py
import numpy as np
from unsamflow.pipeline.derive import DeriveConfig, derive
from unsamflow.pipeline.images import read_rgb
from unsamflow.pipeline.segmenters import build_segmenter
from unsamflow.pipeline.segmenters.base import SegmenterSpec
from unsamflow.pipeline.store import MaskStore, StoreWriter
from unsamflow.pipeline.store import codec as mask_codec

from benchmarks.common import write_results

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FRAMES = [
    "sintel/training/clean/alley_1/frame_0001.png",
    "sintel/training/clean/cave_2/frame_0002.png",
    "sintel/training/clean/market_5/frame_0002.png",
    "sintel/training/final/temple_3/frame_0022.png",
    "video/judo/00000.jpg",
    "video/judo/00003.jpg",
    "video/judo/00006.jpg",
    "video/judo/00009.jpg",
]
REPEATS = 5


# -- records ------------------------------------------------------------------------------------
def _record(mask: np.ndarray, rng: np.random.Generator) -> dict:
    ys, xs = np.nonzero(mask)
    return {"segmentation": mask, "area": int(mask.sum()),
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())],
            "predicted_iou": float(rng.uniform(0.8, 1.0)), "stability_score": float(rng.uniform(0.9, 1.0)),
            "point_coords": [[float(xs[0]), float(ys[0])]], "crop_box": [0, 0, mask.shape[1], mask.shape[0]]}


def sample_frames(data: Path = DATA) -> list[dict]:
    seg = build_segmenter(SegmenterSpec("graph"))
    rng = np.random.default_rng(0)
    out = []
    for fid in FRAMES:
        rgb, sha = read_rgb(data / fid)
        records = seg(rgb)
        for _ in range(6):  # large, overlapping masks
            a, b = rng.choice(len(records), 2, replace=False)
            union = records[a]["segmentation"] | records[b]["segmentation"]
            records.append(_record(cv2.dilate(union.astype(np.uint8), np.ones((41, 41), np.uint8)) > 0, rng))
        masks = np.stack([r["segmentation"] for r in records])
        full_seg, key = derive(masks, np.array([r["bbox"] for r in records], float), DeriveConfig())
        out.append({"frame_id": fid, "image_shape": rgb.shape[:2], "sha256": sha, "records": records,
                    "full_seg": full_seg, "key_objects": key, "masks": masks})
    return out


# -- candidate encodings in one flat HDF5 dataset (the measurement behind mask_codec) -------------
def _rle(mask: np.ndarray) -> np.ndarray:
    """COCO-style uncompressed RLE counts (column-major, starting with a run of zeros)."""
    flat = mask.ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]]))
    return np.concatenate([[0], counts]) if flat[0] else counts


def _unrle(counts: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    values = np.zeros(len(counts), bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape(shape[1], shape[0]).T


def _crop_bits(m: np.ndarray) -> np.ndarray:
    y, x, h, w = mask_codec.tight_box(m)
    return np.packbits(m[y : y + h, x : x + w])


def _uncrop_bits(b: np.ndarray, shape, box, out: np.ndarray) -> None:
    y, x, h, w = (int(v) for v in box)
    if h:
        out[y : y + h, x : x + w] = np.unpackbits(b, count=h * w).reshape(h, w)


# name: (mask -> uint8 bytes, (bytes, shape, tight box, out (H, W) all False) -> None)
CANDIDATES: dict[str, tuple[Callable, Callable]] = {
    "bbox-cropped row-major RLE (uint32 runs)": (
        lambda m: mask_codec.encode_mask(m)[1].view(np.uint8),
        lambda b, shape, box, out: mask_codec.decode_mask(shape, box, b.view(mask_codec.RUN_DTYPE), out),
    ),
    "bbox-cropped packbits": (_crop_bits, _uncrop_bits),
    "full-frame packbits": (
        lambda m: np.packbits(m),
        lambda b, shape, box, out: np.copyto(out, np.unpackbits(b, count=out.size).reshape(shape).view(bool)),
    ),
    "SAM/COCO uncompressed RLE (column-major uint32 counts)": (
        lambda m: _rle(m).astype(np.uint32).view(np.uint8),
        lambda b, shape, box, out: np.copyto(out, _unrle(b.view(np.uint32), shape)),
    ),
}


def bench_candidate(frames: list[dict], name: str, compression: dict, tmp: Path) -> dict:
    enc, dec = CANDIDATES[name]
    path = tmp / "candidate.h5"
    starts, blobs, boxes, frame_start, pos = [], [], [], [0], 0
    for f in frames:
        for m in f["masks"]:
            b = enc(m)
            starts.append(pos)
            blobs.append(b)
            boxes.append(mask_codec.tight_box(m))
            pos += b.size
        frame_start.append(len(starts))
    starts.append(pos)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("bits", data=np.concatenate(blobs), chunks=(1 << 16,), maxshape=(None,),
                          **compression)
        h5["starts"], h5["frame_start"] = np.array(starts), np.array(frame_start)
        h5["boxes"] = np.array(boxes)

    def read(opened, i):
        h5, (fs, st, bx) = opened
        a, b = fs[i], fs[i + 1]
        payload = h5["bits"][st[a] : st[b]]
        shape = frames[i]["image_shape"]
        out = np.zeros((b - a, *shape), bool)  # what a reader returns: (N, H, W) bool, C order
        for j in range(a, b):
            dec(payload[st[j] - st[a] : st[j + 1] - st[a]], shape, bx[j], out[j - a])
        return out

    def open_(p):  # the offsets are read into memory on open, as the store does
        h5 = h5py.File(p, "r")
        return h5, (h5["frame_start"][()], h5["starts"][()], h5["boxes"][()])

    opened = open_(path)
    for i, f in enumerate(frames):  # the encoding must be lossless
        assert np.array_equal(read(opened, i), f["masks"]), name
    times = _timings(len(frames), lambda i: read(opened, i), lambda i: read(open_(path), i))
    opened[0].close()
    comp = compression.get("compression") or "none"
    if "compression_opts" in compression:
        comp += f"-{compression['compression_opts']}"
    size = path.stat().st_size / len(frames) / 1024
    return {"format": f"candidate: {name} + {comp}", "kib_per_frame": size, **times}


# -- reference formats ---------------------------------------------------------------------------
AMG_COLUMNS = ["id", "area", "bbox_x0", "bbox_y0", "bbox_w", "bbox_h", "point_input_x", "point_input_y",
               "predicted_iou", "stability_score", "crop_box_x0", "crop_box_y0", "crop_box_w", "crop_box_h"]


def write_png_folder(f: dict, folder: Path) -> None:
    """segment-anything scripts/amg.py output: one PNG per mask and metadata.csv."""
    folder.mkdir(parents=True)
    with open(folder / "metadata.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(AMG_COLUMNS)
        for i, r in enumerate(f["records"]):
            cv2.imwrite(str(folder / f"{i}.png"), r["segmentation"].astype(np.uint8) * 255)
            out.writerow([i, r["area"], *r["bbox"], *r["point_coords"][0], r["predicted_iou"],
                          r["stability_score"], *r["crop_box"]])


def read_png_folder(folder: Path) -> tuple[np.ndarray, list[dict]]:
    with open(folder / "metadata.csv", newline="") as fh:
        meta = list(csv.DictReader(fh))
    masks = np.stack([cv2.imread(str(folder / f"{m['id']}.png"), cv2.IMREAD_GRAYSCALE) > 0 for m in meta])
    return masks, meta


def coco_rle_string(counts: np.ndarray) -> str:
    """pycocotools' compressed RLE string (rleToString): 5-bit groups, deltas from counts[i-2]."""
    out = []
    for i, c in enumerate(counts.tolist()):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def coco_rle_counts(s: str) -> np.ndarray:
    """Inverse of coco_rle_string (rleFrString)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            ch = ord(s[p]) - 48
            x |= (ch & 0x1F) << (5 * k)
            more = bool(ch & 0x20)
            p += 1
            k += 1
            if not more and ch & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return np.array(counts, np.int64)


def write_coco_json(f: dict, path: Path) -> None:
    h, w = f["image_shape"]
    keys = ("area", "bbox", "predicted_iou", "stability_score", "point_coords", "crop_box")
    anns = [{"segmentation": {"size": [h, w], "counts": coco_rle_string(_rle(r["segmentation"]))},
             **{k: r[k] for k in keys}} for r in f["records"]]
    path.write_text(json.dumps(anns))


def read_coco_json(path: Path) -> tuple[np.ndarray, list[dict]]:
    anns = json.loads(path.read_text())
    masks = [_unrle(coco_rle_counts(a["segmentation"]["counts"]), a["segmentation"]["size"]) for a in anns]
    return np.stack(masks), anns


# -- timing --------------------------------------------------------------------------------------
def _time(read: Callable[[int], object], n: int) -> tuple[float, float]:
    """Median (wall, process CPU) ms to read one frame; frames in random order, REPEATS times each.
    CPU time is reported too because wall time is noisy on a shared 2-core machine."""
    order = np.random.default_rng(1).permutation(np.tile(np.arange(n), REPEATS))
    wall, cpu = [], []
    for i in order:
        t0, c0 = time.perf_counter(), time.process_time()
        read(int(i))
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def _timings(n: int, warm: Callable[[int], object], cold: Callable[[int], object] | None = None) -> dict:
    w, wc = _time(warm, n)
    row = {"read_ms_warm": w, "cpu_ms_warm": wc}
    if cold is not None:
        c, cc = _time(cold, n)
        row.update({"read_ms_cold": c, "cpu_ms_cold": cc})
    return row


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    t0 = time.perf_counter()
    frames = sample_frames()
    n = len(frames)
    n_masks = sum(len(f["records"]) for f in frames)
    print(f"{n} frames, {n_masks} masks ({time.perf_counter() - t0:.1f} s to segment)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        store_path = tmp / "store.h5"
        with StoreWriter(store_path, segmenter={"name": "graph"}, derive_config=DeriveConfig().to_dict(),
                         source={}) as w:
            for f in frames:
                w.add_frame(f["frame_id"], **{k: f[k] for k in ("image_shape", "sha256", "records",
                                                                "full_seg", "key_objects")})
        store = MaskStore(store_path)
        for i, f in enumerate(frames):
            assert np.array_equal(store.read(i).masks, f["masks"])
        rows.append({"format": "unsamflow store (read: every mask + metadata + derived)",
                     "kib_per_frame": store_path.stat().st_size / n / 1024,
                     **_timings(n, store.read, lambda i: MaskStore(store_path).read(i))})
        rows.append({"format": "unsamflow store, read_full_seg + read_key_objects only",
                     "kib_per_frame": "",
                     **_timings(n, lambda i: (store.read_full_seg(i), store.read_key_objects(i)),
                                lambda i: MaskStore(store_path).read_full_seg(i))})
        rows.append({"format": "unsamflow store, read_masks(key objects only)", "kib_per_frame": "",
                     **_timings(n, lambda i: store.read_masks(i, store.read_key_objects(i)))})
        store.close()

        (tmp / "coco").mkdir()
        for i, f in enumerate(frames):
            write_png_folder(f, tmp / "png" / str(i))
            write_coco_json(f, tmp / "coco" / f"{i}.json")
        for i, f in enumerate(frames):
            assert np.array_equal(read_png_folder(tmp / "png" / str(i))[0], f["masks"])
            assert np.array_equal(read_coco_json(tmp / "coco" / f"{i}.json")[0], f["masks"])
        rows.append({"format": "reference: PNG per mask + metadata.csv (SAM amg.py)",
                     "kib_per_frame": _dir_bytes(tmp / "png") / n / 1024,
                     **_timings(n, lambda i: read_png_folder(tmp / "png" / str(i)))})
        rows.append({"format": "reference: COCO compressed-RLE JSON per frame (pure-Python RLE codec)",
                     "kib_per_frame": _dir_bytes(tmp / "coco") / n / 1024,
                     **_timings(n, lambda i: read_coco_json(tmp / "coco" / f"{i}.json"))})

        for name in CANDIDATES:
            for comp in ({}, {"compression": "lzf"}, {"compression": "gzip", "compression_opts": 1},
                         {"compression": "gzip", "compression_opts": 4}):
                rows.append(bench_candidate(frames, name, comp, tmp))
                print(rows[-1], flush=True)
    for r in rows:
        print(r)
    notes = (f"{n} real frames (4 Sintel 1024x436, 4 judo 854x480), {n_masks} masks in all "
             f"({n_masks / n:.0f} per frame): graph segmenter records plus 6 large overlapping masks per "
             "frame. read_ms: median time to read one random frame (all masks decoded to (N,H,W) bool "
             f"plus metadata), {REPEATS} reads per frame; warm = file already open, cold = open + read "
             "(OS page cache warm; the reference formats have no handle to keep: their one figure is both). "
             "cpu_ms: process CPU time of the same reads (wall time is noisy on a shared machine). "
             "Candidates: masks only, one flat dataset with 64 KiB chunks. The COCO decoder is pure "
             "Python (pycocotools is not installed); its C decoder would be faster, its size the same. "
             f"Sizes are apparent file bytes; the PNG folders also cost one inode/block per mask. "
             f"cpus: {os.cpu_count()}.")
    print(write_results("store", rows, notes))
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
