"""A simulated-GPU segmenter: sleep as long as SAM on a GPU takes, then replay real cached records.

On a GPU worker SAM takes about 0.5-2 s per frame and leaves the CPU idle; on this machine every real
segmenter is CPU-bound, so measuring the pipeline with one measures CPU contention. `ReplaySegmenter`
gives the pipeline what SAM gives it - segment-anything's "uncompressed_rle" records, from the
`graph` segmenter run once on the same real frames and cached - after `time.sleep(seconds)`, which
releases the GIL and uses no CPU, like a CUDA kernel that the Python thread waits on.

It is a plug-in like any other, built through the normal `module:factory` path:
    unsamflow-pipeline run ... --segmenter benchmarks.replay_segmenter:ReplaySegmenter \\
        -o cache=/tmp/replay.pkl -o seconds=0.5
(workers must be able to import `benchmarks`: run from the repository root or put it on PYTHONPATH).
Frames are recognised by a fingerprint of a strided sample of their pixels, so copies and links of a
cached frame replay the same records; an unknown frame is an error of that frame.
"""

from __future__ import annotations

import hashlib
import pickle
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.masks import rle_decode, rle_encode

FORMAT = "unsamflow-replay-cache/1"
REPLAY_FACTORY = "benchmarks.replay_segmenter:ReplaySegmenter"  # its plug-in path (module:factory)


def fingerprint(image: np.ndarray) -> str:
    """Cheap identity of a frame: its shape and a 16 x 16 grid of its pixels (~1 us, no full hash)."""
    h, w = image.shape[:2]
    sample = np.ascontiguousarray(image[:: max(1, h // 16), :: max(1, w // 16)])
    return hashlib.blake2b(repr(image.shape).encode() + sample.tobytes(), digest_size=16).hexdigest()


def build_cache(images: Iterable[tuple[str, np.ndarray]], out: Path, segmenter=None) -> dict[str, Any]:
    """Segment each (name, RGB image) once (default: `graph`) and pickle the compact records to `out`.

    Returns {"frames": n, "masks": m, "seconds": time the real segmenter took}.
    """
    if segmenter is None:
        from unsamflow.pipeline.segmenters import build_segmenter
        from unsamflow.pipeline.segmenters.base import SegmenterSpec

        segmenter = build_segmenter(SegmenterSpec("graph"))
    table: dict[str, list[dict[str, Any]]] = {}
    names: dict[str, str] = {}
    masks, t_seg = 0, 0.0
    for name, rgb in images:
        t0 = time.perf_counter()
        records = segmenter(rgb)
        t_seg += time.perf_counter() - t0
        compact = [{**{k: v for k, v in r.items() if k != "segmentation"},
                    "segmentation": rle_encode(r["segmentation"])} for r in records]
        for r in compact:  # arrays load ~10x faster than lists; the replay hands out lists, as SAM does
            r["segmentation"]["counts"] = np.asarray(r["segmentation"]["counts"], np.int64)
        key = fingerprint(rgb)
        table[key] = compact
        names[key] = name
        masks += len(compact)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:
        data = {"format": FORMAT, "records": table, "names": names,
                "segmenter": f"{segmenter.name} {segmenter.version}"}
        pickle.dump(data, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return {"frames": len(table), "masks": masks, "seconds": t_seg}


class ReplaySegmenter:
    """Sleeps `seconds` per frame (no CPU), then returns the cached records of that frame.

    Arguments:
      cache: file written by `build_cache` (records per frame fingerprint).
      seconds: simulated GPU time per frame (SAM ViT-H on one GPU: about 0.5-2 s).
    """

    name = "replay"

    def __init__(self, cache: str = "", seconds: float = 0.5) -> None:
        if not cache or not Path(cache).is_file():
            raise BadInputError(f"replay segmenter: cache file not found: {cache!r} (see build_cache)")
        if seconds < 0:
            raise BadInputError(f"replay segmenter: seconds must be >= 0, got {seconds}")
        with open(cache, "rb") as fh:
            data = pickle.load(fh)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BadInputError(f"replay segmenter: {cache} is not a {FORMAT} file")
        self.cache = str(cache)
        self.seconds = float(seconds)
        self._records: dict[str, list[dict[str, Any]]] = data["records"]
        self.version = f"replay/1 of {data['segmenter']}"

    def config(self) -> dict[str, Any]:
        return {"cache": self.cache, "seconds": self.seconds}

    def segment_compact(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Records with run-length masks (counts as Python lists), as `sam` returns them.

        The whole call takes `seconds`: the list conversion (SAM's own post-processing on the host)
        runs first, then the rest is slept away (the "GPU": it releases the GIL and costs no CPU).
        """
        t0 = time.perf_counter()
        records = self._records.get(fingerprint(image))
        if records is None:
            time.sleep(self.seconds)
            raise ValueError(f"replay segmenter: frame of shape {image.shape} is not in {self.cache}")
        out = [{**r, "segmentation": {"size": r["segmentation"]["size"],
                                      "counts": r["segmentation"]["counts"].tolist()}} for r in records]
        time.sleep(max(0.0, self.seconds - (time.perf_counter() - t0)))
        return out

    def __call__(self, image: np.ndarray) -> list[dict[str, Any]]:
        records = self.segment_compact(image)
        for r in records:
            r["segmentation"] = np.ascontiguousarray(rle_decode(r["segmentation"]))
        return records
