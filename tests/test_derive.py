"""full_seg and key objects (method.md section 1): every rule on hand-built arrays, then real output."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from unsamflow.pipeline.derive import DeriveConfig, derive, full_segmentation, key_objects
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.images import read_rgb


def rect(shape: tuple[int, int], y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """Bool mask with rows y0..y1 and columns x0..x1 set (inclusive)."""
    m = np.zeros(shape, bool)
    m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


def sam_bbox(mask: np.ndarray) -> list[int]:
    """segment-anything's XYWH: w = x_max - x_min, h = y_max - y_min."""
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]


def reference_full_seg(masks: np.ndarray) -> np.ndarray:
    """The reference algorithm written out literally (argmin over the area-weighted stack)."""
    n, H, W = masks.shape
    area = masks.reshape(n, -1).sum(1)
    keep = area < H * W
    masks, area = masks[keep], area[keep]
    order = np.argsort(-area, kind="stable")
    stack = np.concatenate([np.ones((1, H, W)), masks[order].astype(np.float64)])
    areas = np.concatenate([[H * W], area[order]]).astype(np.float64)
    unified = np.argmin(stack * areas[:, None, None] + (1 - stack) * (H * W + 1), axis=0)
    _, relabelled = np.unique(unified, return_inverse=True)
    return relabelled.reshape(H, W)


# ---------------------------------------------------------------- full segmentation


def test_small_masks_sit_on_top_and_uncovered_pixels_are_background():
    shape = (6, 8)
    big = rect(shape, 0, 0, 3, 5)  # area 24
    small = rect(shape, 1, 1, 2, 2)  # area 4, inside big
    seg = full_segmentation(np.stack([small, big]))
    expected = np.zeros(shape, np.int32)
    expected[big] = 1  # largest first -> label 1
    expected[small] = 2
    assert seg.dtype == np.int32
    np.testing.assert_array_equal(seg, expected)


def test_full_frame_mask_is_dropped():
    shape = (4, 5)
    whole = np.ones(shape, bool)
    part = rect(shape, 0, 0, 1, 1)
    seg = full_segmentation(np.stack([whole, part]))
    expected = np.zeros(shape, np.int32)
    expected[part] = 1  # the whole-frame mask takes no label; the rest is background
    np.testing.assert_array_equal(seg, expected)


def test_labels_that_do_not_occur_are_squeezed_out_keeping_order():
    shape = (5, 10)
    a = rect(shape, 0, 0, 4, 5)  # area 30, label 1
    hidden = rect(shape, 0, 7, 1, 8)  # area 4 ...
    cover = rect(shape, 0, 7, 1, 8)  # ... and an identical mask later in the input: it never shows
    c = rect(shape, 4, 8, 4, 9)  # area 2
    d = rect(shape, 1, 1, 2, 3)  # area 6, inside a
    seg = full_segmentation(np.stack([a, hidden, cover, c, d]))
    # largest-first: a(30)=1, d(6)=2, hidden(4)=3, cover(4)=4 (never wins its tie), c(2)=5 -> 0..4
    expected = np.zeros(shape, np.int32)
    expected[a] = 1
    expected[d] = 2
    expected[hidden] = 3
    expected[c] = 4
    np.testing.assert_array_equal(seg, expected)


def test_ties_in_area_go_to_the_earlier_input_mask():
    shape = (3, 7)  # column 6 stays background
    left = rect(shape, 0, 0, 2, 3)  # area 12
    right = rect(shape, 0, 2, 2, 5)  # area 12, overlaps columns 2-3
    seg = full_segmentation(np.stack([right, left]))
    # stable largest-first order keeps input order: right=1, left=2; the overlap goes to `right`
    np.testing.assert_array_equal(seg[0], [2, 2, 1, 1, 1, 1, 0])
    seg = full_segmentation(np.stack([left, right]))
    np.testing.assert_array_equal(seg[0], [1, 1, 1, 1, 2, 2, 0])


def test_more_than_255_labels_are_kept():
    shape = (20, 20)
    masks = np.zeros((300, *shape), bool)
    for i in range(300):
        masks[i, i // 20, i % 20] = True
    seg = full_segmentation(masks)
    # equal areas: input order; pixels 300..399 are uncovered background
    assert seg.max() == 300
    np.testing.assert_array_equal(seg.reshape(-1)[:300], np.arange(1, 301))
    assert (seg.reshape(-1)[300:] == 0).all()


def test_fully_covered_frame_gives_label_zero_to_the_largest_mask_as_the_reference_does():
    shape = (2, 4)
    left, right = rect(shape, 0, 0, 1, 2), rect(shape, 0, 3, 1, 3)
    seg = full_segmentation(np.stack([right, left]))
    np.testing.assert_array_equal(seg, [[0, 0, 0, 1], [0, 0, 0, 1]])


def test_no_masks():
    seg, keys = derive(np.zeros((0, 3, 4), bool), np.zeros((0, 4)), DeriveConfig())
    np.testing.assert_array_equal(seg, np.zeros((3, 4), np.int32))
    assert keys.dtype == np.int64 and keys.size == 0
    assert key_objects(np.zeros((0, 3, 4), bool), []).size == 0


def test_matches_the_literal_reference_algorithm_on_random_masks():
    rng = np.random.default_rng(0)
    masks = np.zeros((40, 30, 40), bool)
    for m in masks:  # random rectangles, many overlaps and equal areas
        y0, x0 = rng.integers(0, 25), rng.integers(0, 35)
        m[y0 : y0 + rng.integers(1, 6), x0 : x0 + rng.integers(1, 6)] = True
    masks[7] = True  # one whole-frame mask
    np.testing.assert_array_equal(full_segmentation(masks), reference_full_seg(masks))


# ---------------------------------------------------------------- key objects


def key_scene(h: int, w: int, fill_rows: int | None = None, extra_overlaps: int = 5):
    """One candidate with SAM bbox h x w in a 260 x 360 frame, plus `extra_overlaps` masks touching it."""
    shape = (260, 360)
    cand = rect(shape, 2, 2, 2 + h, 2 + w)
    if fill_rows is not None:  # keep only the first fill_rows rows, plus the bottom-right pixel (keeps bbox)
        cand[2 + fill_rows :] = False
        cand[2 + h, 2 + w] = True
    others = [rect(shape, 2 + i, 2, 2 + i, 2) for i in range(extra_overlaps)]  # one pixel each, inside
    others.append(rect(shape, 250, 350, 255, 355))  # far away: no overlap
    masks = np.stack([cand, *others])
    bboxes = np.array([sam_bbox(m) for m in masks], np.float64)
    return masks, bboxes


@pytest.mark.parametrize(
    ("h", "w", "kept"),
    [
        (50, 100, True),
        (49, 100, False),
        (200, 100, True),
        (201, 100, False),
        (100, 50, True),
        (100, 49, False),
        (100, 300, True),
        (100, 301, False),
    ],
)
def test_key_object_box_size_bounds_are_inclusive(h, w, kept):
    masks, bboxes = key_scene(h, w)
    assert bboxes[0, 2:].tolist() == [w, h]
    assert (0 in key_objects(masks, bboxes, DeriveConfig())) is kept


def test_key_object_fill_threshold_is_inclusive():
    # bbox 100 x 100 (SAM convention), so fill = area / 10000; 49 full rows of 101 pixels + 1 = 4950
    masks, bboxes = key_scene(100, 100, fill_rows=49)
    area = int(masks[0].sum())
    assert area == 49 * 101 + 1
    exact = DeriveConfig(min_fill=area / 10000)
    assert 0 in key_objects(masks, bboxes, exact)
    assert 0 not in key_objects(masks, bboxes, DeriveConfig(min_fill=(area + 1) / 10000))
    assert 0 not in key_objects(masks, bboxes, DeriveConfig())  # 0.4951 < 0.5


def test_key_object_needs_min_overlaps_counting_itself():
    masks, bboxes = key_scene(100, 100, extra_overlaps=5)  # itself + 5 = 6
    assert key_objects(masks, bboxes, DeriveConfig()).tolist() == [0]
    masks, bboxes = key_scene(100, 100, extra_overlaps=4)  # 5 < 6
    assert key_objects(masks, bboxes, DeriveConfig()).size == 0
    # bounding boxes that overlap without shared pixels do not count
    ring = np.zeros_like(masks[0])
    ring[0, :] = True
    ring[:, 0] = True
    masks2 = np.concatenate([masks, ring[None]])
    bboxes2 = np.array([sam_bbox(m) for m in masks2], np.float64)
    assert key_objects(masks2, bboxes2, DeriveConfig()).size == 0
    # a whole-frame mask does count (only full_seg drops it)
    masks3 = np.concatenate([masks, np.ones((1, *masks.shape[1:]), bool)])
    bboxes3 = np.array([sam_bbox(m) for m in masks3], np.float64)
    assert key_objects(masks3, bboxes3, DeriveConfig()).tolist() == [0]


def test_key_objects_use_the_given_boxes():
    masks, bboxes = key_scene(100, 100)
    bboxes[0, 3] = 300  # a box that says h=300 disqualifies the mask, whatever its pixels
    assert key_objects(masks, bboxes, DeriveConfig()).size == 0


# ---------------------------------------------------------------- config


def test_config_round_trip_and_errors():
    cfg = DeriveConfig(min_h=10, max_h=20, min_w=5, max_w=30, min_fill=0.25, min_overlaps=2)
    assert DeriveConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert DeriveConfig.from_dict({}) == DeriveConfig()
    assert DeriveConfig().to_dict() == {
        "min_h": 50,
        "max_h": 200,
        "min_w": 50,
        "max_w": 300,
        "min_fill": 0.5,
        "min_overlaps": 6,
    }
    with pytest.raises(BadInputError, match="unknown key.*min_hieght"):
        DeriveConfig.from_dict({"min_hieght": 3})
    with pytest.raises(BadInputError, match="min_h .* max_h"):
        DeriveConfig(min_h=300)
    with pytest.raises(BadInputError, match="min_fill"):
        DeriveConfig(min_fill=1.5)


def test_bad_arrays_are_named():
    with pytest.raises(BadInputError, match="bool"):
        full_segmentation(np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(BadInputError, match=r"\(N, H, W\)"):
        full_segmentation(np.zeros((2, 2), bool))
    with pytest.raises(BadInputError, match="bboxes"):
        key_objects(np.zeros((2, 3, 3), bool), np.zeros((3, 4)))


# ---------------------------------------------------------------- real segmenter output


def test_invariants_on_real_graph_masks(shared_data):
    from unsamflow.pipeline.segmenters import SegmenterSpec, build_segmenter

    img, _ = read_rgb(shared_data / "kitti2015/training/image_2/000000_10.png")
    img = cv2.resize(img, (621, 188), interpolation=cv2.INTER_AREA)  # half size: keeps the test fast
    records = build_segmenter(SegmenterSpec("graph"))(img)
    masks = np.stack([r["segmentation"] for r in records])
    bboxes = np.array([r["bbox"] for r in records], np.float64)
    cfg = DeriveConfig(min_h=25, max_h=100, min_w=25, max_w=150, min_fill=0.5, min_overlaps=3)
    seg, keys = derive(masks, bboxes, cfg)

    np.testing.assert_array_equal(seg, reference_full_seg(masks))
    assert seg.shape == img.shape[:2] and seg.dtype == np.int32
    assert np.array_equal(np.unique(seg), np.arange(seg.max() + 1))  # consecutive labels
    assert seg.max() > 10

    # key objects recomputed the slow way, mask by mask
    expected = []
    for i, (m, (_, _, w, h)) in enumerate(zip(masks, bboxes, strict=True)):
        size_ok = cfg.min_h <= h <= cfg.max_h and cfg.min_w <= w <= cfg.max_w
        overlaps = (masks & m).any(axis=(1, 2)).sum()
        if size_ok and m.sum() / (h * w) >= cfg.min_fill and overlaps >= cfg.min_overlaps:
            expected.append(i)
    assert keys.tolist() == expected
    assert len(expected) > 0
