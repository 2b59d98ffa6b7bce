"""Flow metrics against values worked out by hand on tiny flows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from unsamflow.trainer.metrics import FlowMetrics, epe_map, flow_metrics


def _pair(gt_uv, err_uv):
    """One-row numpy flows (H=1, W=n, 2): gt and pred = gt + err."""
    gt = np.array([gt_uv], np.float32)
    return gt + np.array([err_uv], np.float32), gt


def test_one_image_by_hand():
    # Errors 5 (3-4-5 triangle), 0.5, 2, 4; |gt| 10, 0, 100, 20.
    pred, gt = _pair([(10, 0), (0, 0), (100, 0), (0, 20)], [(3, 4), (0.5, 0), (0, 2), (4, 0)])
    m = flow_metrics(pred, gt)
    assert m["epe"] == pytest.approx((5 + 0.5 + 2 + 4) / 4)
    assert m["px1"] == pytest.approx(1 / 4)  # only 0.5 < 1
    assert m["px3"] == pytest.approx(2 / 4)  # 0.5, 2
    assert m["px5"] == pytest.approx(3 / 4)  # 5 is not < 5
    # Outliers: 5 > 3 and 5 > 0.5 yes; 4 > 3 and 4 > 1.0 yes; 2 no; 0.5 no.
    assert m["flall"] == pytest.approx(50.0)
    assert "epe_occ" not in m


def test_five_percent_rule_of_fl_all():
    # Error 4 px > 3 px, but only 4 % of a 100 px motion: not an outlier. 6 % of 100: outlier.
    pred, gt = _pair([(100, 0), (100, 0)], [(4, 0), (6, 0)])
    assert flow_metrics(pred, gt)["flall"] == pytest.approx(50.0)


def test_valid_and_occlusion_split():
    pred, gt = _pair([(0, 0)] * 4, [(1, 0), (2, 0), (3, 0), (100, 0)])
    valid = np.array([[True, True, True, False]])
    occ = np.array([[False, True, True, True]])
    m = flow_metrics(pred, gt, valid, occ)
    assert m["epe"] == pytest.approx(2.0)  # the 100 px error is not valid
    assert m["epe_non_occ"] == pytest.approx(1.0)
    assert m["epe_occ"] == pytest.approx(2.5)


def test_sintel_pools_pixels_kitti_also_averages_images():
    # Image A: 1 valid pixel with error 10. Image B: 3 valid pixels with error 2.
    a_pred, a_gt = _pair([(0, 0)] * 3, [(10, 0), (0, 0), (0, 0)])
    a_valid = np.array([[True, False, False]])
    b_pred, b_gt = _pair([(0, 0)] * 3, [(2, 0)] * 3)
    pixel = FlowMetrics.for_dataset("sintel-final-training")
    image = FlowMetrics.for_dataset("kitti-2015-training")
    assert (pixel.aggregate, image.aggregate) == ("pixel", "image")
    for acc in (pixel, image):
        acc.update(a_pred, a_gt, a_valid)
        acc.update(b_pred, b_gt)
    assert pixel.compute()["epe"] == pytest.approx((10 + 3 * 2) / 4)
    assert "epe_per_image" not in pixel.compute()
    # KITTI: plain names pool pixels (the devkit's Fl-all); *_per_image average the images.
    assert image.compute()["epe"] == pytest.approx((10 + 3 * 2) / 4)
    assert image.compute()["epe_per_image"] == pytest.approx((10 + 2) / 2)
    assert pixel.compute()["flall"] == pytest.approx(25.0)
    assert image.compute()["flall"] == pytest.approx(25.0)
    assert image.compute()["flall_per_image"] == pytest.approx(50.0)


def test_merge_equals_one_accumulator():
    rng = np.random.default_rng(0)
    flows = [(rng.normal(size=(4, 5, 2)), rng.normal(size=(4, 5, 2)), rng.random((4, 5)) > 0.3)
             for _ in range(4)]  # fmt: skip
    for mode in ("pixel", "image"):
        whole, left, right = FlowMetrics(mode), FlowMetrics(mode), FlowMetrics(mode)
        for i, (p, g, v) in enumerate(flows):
            whole.update(p, g, v)
            (left if i < 2 else right).update(p, g, v)
        got, want = left.merge(right).compute(), whole.compute()
        assert got == pytest.approx(want)


def test_torch_batches_are_channel_first():
    gt = torch.zeros(2, 2, 3, 4)
    pred = gt.clone()
    pred[0, 0] += 3.0
    pred[1, 1] += 4.0
    assert torch.equal(epe_map(pred, gt), torch.stack([torch.full((3, 4), 3.0), torch.full((3, 4), 4.0)]))
    acc = FlowMetrics("image")
    per_image = acc.update(pred, gt, torch.ones(2, 3, 4, dtype=torch.bool))
    assert [m["epe"] for m in per_image] == [3.0, 4.0]
    assert acc.compute()["epe_per_image"] == pytest.approx(3.5)
    # numpy (H, W, 2) and torch (2, H, W) of the same flow agree.
    np_pred = pred[0].permute(1, 2, 0).numpy()
    np_gt = gt[0].permute(1, 2, 0).numpy()
    assert flow_metrics(np_pred, np_gt) == flow_metrics(pred[0], gt[0])


def test_empty_valid_set_leaves_metric_out_and_bad_shapes_raise():
    pred, gt = _pair([(0, 0)], [(1, 1)])
    assert flow_metrics(pred, gt, np.zeros((1, 1), bool)) == {}
    assert flow_metrics(pred, gt)["epe"] == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="differ in shape"):
        flow_metrics(np.zeros((2, 3, 2)), np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="valid mask"):
        flow_metrics(pred, gt, np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="aggregate"):
        FlowMetrics("median")
