"""What the segment stage does to keep up with a GPU: the segmenter alone on the task's thread, turns
in the model for a worker's threads, run-length crops decoded within their box, batched progress, and
the simulated-GPU plug-in of benchmarks/bench_scaling through the normal plug-in path."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from unsamflow.pipeline.cluster import ClusterConfig, open_cluster
from unsamflow.pipeline.derive import DeriveConfig
from unsamflow.pipeline.dispatch import segment_shards
from unsamflow.pipeline.manifest import Frame, Manifest
from unsamflow.pipeline.masks import CropMasks, rle_crop, rle_crops, rle_decode, rle_encode
from unsamflow.pipeline.segment import PHASES, ProgressSink, segment_frame, segment_shard
from unsamflow.pipeline.segmenters import build_segmenter
from unsamflow.pipeline.segmenters.base import SegmenterSpec
from unsamflow.pipeline.shard import write_shards
from unsamflow.pipeline.store import MaskStore
from unsamflow.pipeline.store.codec import tight_box

from benchmarks.replay_segmenter import REPLAY_FACTORY, build_cache


def test_run_length_crop_equals_decoding_the_whole_frame():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        h, w = (int(v) for v in rng.integers(1, 10, 2))
        mask = rng.random((h, w)) < rng.choice([0.0, 0.1, 0.5, 1.0])
        if rng.random() < 0.3:  # one small blob: boxes that do not touch the frame's edges
            mask[:] = False
            y, x = rng.integers(0, h), rng.integers(0, w)
            mask[y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = True
        rle = rle_encode(mask)
        full = rle_decode(rle)
        box, crop = rle_crop(rle)
        y, x, bh, bw = tight_box(full)
        assert box == (y, x, bh, bw)
        assert crop.flags.c_contiguous and np.array_equal(crop, full[y : y + bh, x : x + bw])


def test_run_length_crop_refuses_counts_that_do_not_cover_the_frame():
    from unsamflow.pipeline.errors import BadInputError

    with pytest.raises(BadInputError, match="RLE mask 0: counts must be non-negative and sum to 2x3 = 6 "
                                            "pixels, they sum to 5"):
        rle_crop({"size": [2, 3], "counts": [1, 4]})
    with pytest.raises(BadInputError, match="RLE mask 1: counts must be non-negative"):
        rle_crops([{"size": [2, 3], "counts": [6]}, {"size": [2, 3], "counts": [7, -1]}], (2, 3))
    with pytest.raises(BadInputError, match="RLE mask 0: counts must be a list of run lengths, got bytes"):
        rle_crops([{"size": [2, 3], "counts": b"06"}], (2, 3))  # a compressed COCO string, undecoded


class _Recorder:
    """A segmenter that notes how many threads are inside it at once."""

    name, version = "recorder", "1"

    def __init__(self, thread_safe: bool):
        self.thread_safe = thread_safe
        self.inside = self.most = 0
        self.lock = threading.Lock()

    def config(self):
        return {}

    def __call__(self, image):
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        time.sleep(0.05)
        with self.lock:
            self.inside -= 1
        return []


@pytest.mark.parametrize("thread_safe", [False, True])
def test_a_workers_threads_take_turns_in_a_segmenter_unless_it_is_thread_safe(thread_safe):
    seg = _Recorder(thread_safe)
    image = np.zeros((8, 8, 3), np.uint8)
    timings: list[dict] = [{} for _ in range(4)]
    threads = [threading.Thread(target=segment_frame, args=(seg, image, f"f{i}", None,
                                                           SegmenterSpec("recorder"), timings[i]))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seg.most == (4 if thread_safe else 1)
    assert all(t["segment"] >= 0.05 for t in timings)
    waited = sum(t["wait"] for t in timings)
    assert waited > 0.1 if not thread_safe else waited < 0.05


def test_progress_goes_in_batches_with_counts():
    sent: list[dict] = []
    sink = ProgressSink(interval=3600)
    sink._send = sent.append
    for i in range(5):
        sink.frame(i)
    sink.frame(None)
    assert sent == []  # nothing due within the interval
    sink.flush()
    assert sent == [{"frames": 6, "bad": 1, "masks": 4}]
    sink.flush()
    assert len(sent) == 1  # nothing new, nothing sent
    sink = ProgressSink(interval=0)
    sink._send = sent.append
    sink.frame(3)
    assert sent[-1] == {"frames": 1, "bad": 0, "masks": 3}


@pytest.fixture(scope="module")
def replay_data(shared_data, tmp_path_factory) -> tuple[Manifest, Path]:
    """Six small real frames and the replay cache of their `graph` records."""
    root = tmp_path_factory.mktemp("replay")
    frames, images = [], []
    for src in sorted((shared_data / "video" / "judo").glob("*.jpg"))[:6]:
        bgr = cv2.resize(cv2.imread(str(src)), (160, 90), interpolation=cv2.INTER_AREA)
        (root / "judo").mkdir(exist_ok=True)
        cv2.imwrite(str(root / "judo" / (src.stem + ".png")), bgr)
        frames.append(Frame(f"judo/{src.stem}.png", "judo"))
        images.append((src.stem, bgr[..., ::-1].copy()))
    cache = root / "replay.pkl"
    seg = build_segmenter(SegmenterSpec("graph", {"max_side": 160, "min_area": 64}))
    made = build_cache(images, cache, seg)
    assert made["frames"] == 6 and made["masks"] > 6
    return Manifest("folder", str(root), frames), cache


def test_replayed_records_make_the_stores_the_real_segmenter_makes(replay_data, tmp_path):
    """The plug-in (module:factory) sleeps, then replays; its stores hold what `graph` gives, and the
    task reports the time of every phase."""
    manifest, cache = replay_data
    shard = write_shards(manifest, 1, tmp_path / "shards")[0]
    replay = SegmenterSpec(REPLAY_FACTORY, {"cache": str(cache), "seconds": 0.02})
    graph = SegmenterSpec("graph", {"max_side": 160, "min_area": 64})
    stats = segment_shard(str(shard), str(tmp_path / "replay.h5"), replay, DeriveConfig().to_dict())
    segment_shard(str(shard), str(tmp_path / "graph.h5"), graph, DeriveConfig().to_dict())
    assert stats["frames"] == 6 and not stats["bad"]
    assert set(stats["phases_s"]) == set(PHASES) and stats["phases_s"]["segment"] >= 6 * 0.02
    assert stats["segmenter_s"] == stats["phases_s"]["segment"]
    with MaskStore(tmp_path / "replay.h5") as a, MaskStore(tmp_path / "graph.h5") as b:
        assert a.frame_ids == b.frame_ids
        for fid in a.frame_ids:
            fa, fb = a.read(fid), b.read(fid)
            assert np.array_equal(fa.masks, fb.masks) and np.array_equal(fa.full_seg, fb.full_seg)
            assert np.array_equal(fa.key_objects, fb.key_objects) and np.array_equal(fa.bbox, fb.bbox)
            assert CropMasks.from_stack(fa.masks).boxes.shape == (len(fa.masks), 4)


def test_two_threads_of_one_worker_share_the_simulated_gpu(replay_data, tmp_path):
    """One worker with 2 threads (a GPU worker's setting): the shards finish, the model is built once,
    and the threads' segmenter time never overlaps (their waits show it); progress counts every frame."""
    manifest, cache = replay_data
    shards = write_shards(manifest, 3, tmp_path / "shards")
    spec = SegmenterSpec(REPLAY_FACTORY, {"cache": str(cache), "seconds": 0.1})
    with open_cluster(ClusterConfig(workers=1, threads_per_worker=2, dashboard=None)) as client:
        res = segment_shards(shards, tmp_path / "stores", spec, DeriveConfig().to_dict(), client,
                             progress=False)
    assert res.written == 3 and res.frames == 6 and not res.bad and not res.failed
    assert res.phases_s["wait"] > 0.05  # the other thread held the model meanwhile
    assert res.wall_s >= 6 * 0.1  # one frame at a time in the model
    assert "per frame (ms, summed over threads): read" in res.summary()


def test_all_masks_of_a_frame_crop_at_once_as_one_by_one():
    """rle_crops on many masks (some empty, some spanning columns, tiny batches) == per-mask decoding."""
    import unsamflow.pipeline.masks as masks_module

    rng = np.random.default_rng(1)
    H, W = 23, 31
    segs, full = [], []
    for k in range(60):
        m = np.zeros((H, W), bool)
        if k % 7:  # every 7th mask is empty
            y, x = rng.integers(0, H), rng.integers(0, W)
            m[y : y + rng.integers(1, H), x : x + rng.integers(1, W)] = rng.random() < 0.5 or k % 3 == 0
            m &= rng.random((H, W)) < 0.9
        segs.append(rle_encode(m))
        full.append(m)
    as_arrays = [{**seg, "counts": np.asarray(seg["counts"], np.int32)} for seg in segs]  # plug-ins' form
    for batch, runs, given in ((masks_module.RLE_BATCH_BYTES, masks_module.RLE_BATCH_RUNS, segs),
                               (1, 1, segs), (200, 7, as_arrays), (10**9, 10**9, as_arrays)):
        old = masks_module.RLE_BATCH_BYTES, masks_module.RLE_BATCH_RUNS
        masks_module.RLE_BATCH_BYTES, masks_module.RLE_BATCH_RUNS = batch, runs
        try:
            boxes, crops = rle_crops(given, (H, W))
        finally:
            masks_module.RLE_BATCH_BYTES, masks_module.RLE_BATCH_RUNS = old
        for m, box, crop in zip(full, boxes, crops, strict=True):
            y, x, h, w = tight_box(m)
            assert tuple(box) == (y, x, h, w) and np.array_equal(crop, m[y : y + h, x : x + w])


def test_all_crops_of_a_frame_encode_at_once_as_one_by_one(monkeypatch):
    """codec.encode_crops == encode_mask crop by crop: empty crops, crops starting with a set pixel,
    all-set and sparse crops, and a frame of no masks."""
    from unsamflow.pipeline.store import codec
    from unsamflow.pipeline.store.codec import encode_crops, encode_mask

    rng = np.random.default_rng(2)
    for _ in range(300):
        crops = []
        for _ in range(int(rng.integers(0, 8))):
            h, w = (int(v) for v in rng.integers(1, 6, 2))
            crops.append(np.zeros((0, 0), bool) if rng.random() < 0.2
                         else rng.random((h, w)) < rng.choice([0.0, 0.3, 1.0]))
        runs, counts = encode_crops(crops)
        ref = [encode_mask(c, (0, 0, *c.shape) if c.size else (0, 0, 0, 0))[1] for c in crops]
        monkeypatch.setattr(codec, "ENCODE_BATCH_BYTES", int(rng.integers(1, 30)))  # batches of 1+ crops
        assert all(np.array_equal(a, b) for a, b in zip(encode_crops(crops), (runs, counts), strict=True))
        monkeypatch.undo()
        assert counts.tolist() == [len(r) for r in ref]
        assert runs.dtype == np.uint32
        assert np.array_equal(runs, np.concatenate(ref) if ref else np.zeros(0))


def test_a_store_scan_reads_what_frame_by_frame_reads(replay_data, tmp_path):
    """MaskStore.scan (verify's whole-store pass, a block of frames per HDF5 read) == read(row) for every
    frame, across block boundaries and with a bad frame in the store."""
    manifest, cache = replay_data
    shard = write_shards(manifest, 1, tmp_path / "shards")[0]
    spec = SegmenterSpec(REPLAY_FACTORY, {"cache": str(cache), "seconds": 0.0})
    segment_shard(str(shard), str(tmp_path / "s.h5"), spec, DeriveConfig().to_dict())
    with MaskStore(tmp_path / "s.h5") as store:
        for block in (1, 4, 64):
            scanned = list(store.scan(block))
            assert [f.frame_id for f in scanned] == store.frame_ids
            for row, got in enumerate(scanned):
                want = store.read(row)
                for field in ("masks", "area", "bbox", "point_coords", "full_seg", "key_objects"):
                    assert np.array_equal(getattr(got, field), getattr(want, field)), (block, row, field)
        assert store._block == {}


def test_overlap_counts_in_small_batches_equal_one_batch(monkeypatch):
    """derive's key objects do not depend on how many meeting masks one overlap stack holds."""
    import unsamflow.pipeline.derive as derive_module

    rng = np.random.default_rng(3)
    H, W = 120, 160
    masks = np.zeros((40, H, W), bool)
    for m in masks:
        y, x = rng.integers(0, H - 60), rng.integers(0, W - 60)
        m[y : y + rng.integers(55, 60), x : x + rng.integers(55, 60)] = True
        m &= rng.random((H, W)) < 0.95
    bboxes = np.array([[b[1], b[0], b[3] - 1, b[2] - 1] for b in CropMasks.from_stack(masks).boxes], float)
    cfg = DeriveConfig(min_h=10, min_w=10, min_overlaps=3)
    want = derive_module.derive(masks, bboxes, cfg)
    assert len(want[1]) > 0
    monkeypatch.setattr(derive_module, "OVERLAP_BATCH_BYTES", 1)  # one meeting mask per stack
    got = derive_module.derive(masks, bboxes, cfg)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    monkeypatch.setattr(derive_module, "OVERLAP_STACK_MAX_PIXELS", 0)  # every box "big": mask by mask
    got = derive_module.derive(masks, bboxes, cfg)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_a_damaged_block_is_blamed_on_its_frames_not_on_the_block(replay_data, tmp_path, monkeypatch):
    """scan() falls back to frame-by-frame reads when a block cannot be read: only the frame whose data
    is damaged fails; the others of its block read as ever. Frames from scan are copies."""
    from unsamflow.pipeline.errors import StoreError
    from unsamflow.pipeline.store import reader as reader_module
    from unsamflow.pipeline.verify import read_frames

    manifest, cache = replay_data
    shard = write_shards(manifest, 1, tmp_path / "shards")[0]
    spec = SegmenterSpec(REPLAY_FACTORY, {"cache": str(cache), "seconds": 0.0})
    segment_shard(str(shard), str(tmp_path / "s.h5"), spec, DeriveConfig().to_dict())
    store = MaskStore(tmp_path / "s.h5")
    damaged = store.frame_ids[3]
    seg_start, seg_len = int(store._segstart[3]), int(store.read_full_seg(3).nbytes)
    real_slice = reader_module.MaskStore._slice

    def slice_with_a_bad_chunk(self, name, start, count):  # frame 3's label map cannot be read
        if name == "derived/full_seg" and start <= seg_start < start + count:
            raise reader_module.StoreCorrupt(f"{self.path}: corrupt: cannot read {name}")
        return real_slice(self, name, start, count)

    monkeypatch.setattr(reader_module.MaskStore, "_slice", slice_with_a_bad_chunk)
    scan = read_frames(store)
    assert len(scan.problems) == 1 and repr(damaged) in scan.problems[0], scan.problems
    assert set(scan.sha) == set(store.frame_ids) - {damaged}
    monkeypatch.undo()
    assert issubclass(reader_module.StoreCorrupt, StoreError)  # what scan's fallback catches
    frames = store.scan()
    frame = next(frames)
    before = store.read(0).full_seg
    frame.full_seg[:] = before.max() + 1  # changing a scanned frame changes nothing else
    assert np.array_equal(store.read(0).full_seg, before) and seg_len > 0
    frames.close()
    store.close()


def test_the_writer_takes_records_with_mixed_nesting_and_names_a_bad_one(tmp_path):
    """The metadata of a frame goes in per field, but records the writer took one by one before (boxes
    as [x, y, w, h] or [[x, y, w, h]], points as [[x, y]] or [x, y]) are still taken, and a bad one is
    named with its mask index."""
    from unsamflow.pipeline.errors import StoreError
    from unsamflow.pipeline.store import StoreWriter

    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True

    def rec(bbox, point):
        return {"segmentation": mask, "area": 6, "bbox": bbox, "predicted_iou": 0.9, "stability_score": 0.9,
                "point_coords": point, "crop_box": [0, 0, 5, 4]}

    records = [rec([1, 1, 2, 1], [[2.0, 1.0]]), rec([[1, 1, 2, 1]], [2.0, 1.0])]
    with StoreWriter(tmp_path / "s.h5", segmenter={}, derive_config={}, source={}) as writer:
        writer.add_frame("f", image_shape=(4, 5), sha256="0" * 64, records=records,
                         full_seg=np.zeros((4, 5), np.uint8), key_objects=[])
        with pytest.raises(StoreError, match="frame 'g', mask 1: bbox must be 4 integers"):
            writer.add_frame("g", image_shape=(4, 5), sha256="0" * 64,
                             records=[records[0], rec([1, 1, 2.5, 1], [[2.0, 1.0]])],
                             full_seg=np.zeros((4, 5), np.uint8), key_objects=[])
        with pytest.raises(StoreError, match="frame 'h', mask 0: point_coords must be one"):
            writer.add_frame("h", image_shape=(4, 5), sha256="0" * 64,
                             records=[rec([1, 1, 2, 1], [[2.0, 1.0], [3.0, 1.0]]), records[1]],
                             full_seg=np.zeros((4, 5), np.uint8), key_objects=[])
    with MaskStore(tmp_path / "s.h5") as store:
        fm = store.read("f")
        assert fm.bbox.tolist() == [[1, 1, 2, 1]] * 2 and fm.point_coords.tolist() == [[2.0, 1.0]] * 2
        assert store.frame_ids == ["f"]


def test_output_that_cannot_be_stored_fails_its_frame_or_if_every_frame_its_shard(tmp_path):
    """Making masks and rows of a segmenter's output now runs on the finisher thread; an error there is
    still the frame's (recorded bad, the shard goes on) unless every frame has it (the shard fails)."""
    root = tmp_path / "data"
    (root / "s").mkdir(parents=True)
    for name, width in (("a.png", 32), ("b.png", 40), ("c.png", 32)):
        cv2.imwrite(str(root / "s" / name), np.full((24, width, 3), 90, np.uint8))
    manifest = Manifest("folder", str(root), [Frame(f"s/{n}", "s") for n in ("a.png", "b.png", "c.png")])
    shard = write_shards(manifest, 1, tmp_path / "shards")[0]
    spec = SegmenterSpec("tests.plugin_segmenter:make_unusable", {"bad_width": 40})
    stats = segment_shard(str(shard), str(tmp_path / "one.h5"), spec, DeriveConfig().to_dict())
    assert stats["frames"] == 2 and list(stats["bad"]) == ["s/b.png"]
    assert "output unusable: ValueError" in stats["bad"]["s/b.png"]
    every = SegmenterSpec("tests.plugin_segmenter:make_unusable", {"bad_width": -1})
    with pytest.raises(ValueError):
        segment_shard(str(shard), str(tmp_path / "all.h5"), every, DeriveConfig().to_dict())
    assert not (tmp_path / "all.h5").exists()


def test_the_budget_counts_every_batch_of_run_length_masks(monkeypatch):
    """Over the frame budget, the refusal names the mask where the crops' bytes, counted across
    rle_crops' batches, pass it, and the bytes used up to there."""
    import unsamflow.pipeline.masks as masks_module
    from unsamflow.pipeline.errors import BadFrameError

    H, W = 20, 30
    segs = []
    for k in range(6):
        m = np.zeros((H, W), bool)
        m[k : k + 5, k : k + 10] = True  # 50-byte crops
        segs.append({"segmentation": rle_encode(m)})
    fixed = masks_module.frame_fixed_bytes((H, W))
    for runs in (10**9, 3):  # one batch, or a batch per mask
        monkeypatch.setattr(masks_module, "RLE_BATCH_RUNS", runs)
        with pytest.raises(BadFrameError, match="after 4 of 6 masks") as err:
            CropMasks.from_records(segs, (H, W), budget=fixed + 3 * 50 + 10, frame_id="f")
        assert masks_module.fmt_bytes(fixed + 200) in str(err.value)
        assert len(CropMasks.from_records(segs, (H, W), budget=fixed + 300, frame_id="f")) == 6


def test_which_records_wait_for_the_finisher_whole():
    """Run-length records always; bool masks while they fit a quarter of the frame budget; malformed
    output never (it is checked at once)."""
    from unsamflow.pipeline.segment import hand_over

    rle = [{"segmentation": {"size": [10, 10], "counts": [100]}}]
    bools = [{"segmentation": np.zeros((10, 10), bool)}] * 4  # 400 bytes
    assert hand_over(rle, (10, 10), budget=1)
    assert hand_over(bools, (10, 10), budget=1600) and not hand_over(bools, (10, 10), budget=1599)
    assert hand_over(bools, (10, 10), budget=None)
    assert not hand_over(None, (10, 10), 10**9) and not hand_over([], (10, 10), 10**9)
    assert not hand_over([[1, 2]], (10, 10), 10**9)
