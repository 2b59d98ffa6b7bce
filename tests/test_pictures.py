"""Pictures say what they show: tile titles, colour-wheel legend, error scale in px, full frame ids."""

from __future__ import annotations

import numpy as np
from unsamflow.pipeline import show
from unsamflow.pipeline.flow.viz import annotate_panel, error_scale, flow_panel, wheel_legend


def test_wheel_legend_is_the_colour_wheel():
    disc = wheel_legend(33)
    assert disc.shape == (33, 33, 3)
    assert (disc[16, 16] == 255).all()  # zero flow is white
    assert (disc[0, 0] == 255).all()  # outside the disc: white background
    right = disc[16, 32].astype(int)  # flow (1, 0) at full saturation: the wheel's red end
    assert right[0] == 255 and right[2] < 50


def test_error_colours_are_kittis_and_a_model_wrong_everywhere_is_not_blank():
    """The KITTI devkit's bins: blue below 1.5 px, yellow at 3-6 px, dark red beyond 48 px; before, every
    error >= 5 px was white, so a model wrong everywhere gave a blank map."""
    from unsamflow.pipeline.flow.viz import ERROR_COLORS, error_to_color

    epe = np.array([[0.1, 1.0, 4.0, 30.0, 100.0, np.nan]], np.float32)
    img = error_to_color(epe, np.array([[True, True, True, True, True, True]]))
    assert img[0, 0].tolist() == [49, 54, 149] and img[0, 1].tolist() == [171, 217, 233]
    assert img[0, 2].tolist() == [254, 224, 144] and img[0, 4].tolist() == [165, 0, 38]
    assert img[0, 5].tolist() == [0, 0, 0]  # no finite error: black, like pixels without ground truth
    wrong = error_to_color(np.full((8, 8), 20.0, np.float32))
    assert (wrong != 255).any(axis=2).all()  # nothing white
    bar = error_scale(200, 30)
    assert bar.shape == (30, 200, 3)
    assert bar[0, 0].tolist() == ERROR_COLORS[0].tolist() and bar[0, -1].tolist() == ERROR_COLORS[-1].tolist()


def test_infer_picture_has_a_stated_scale_and_near_zero_flow_stays_pale():
    from unsamflow.trainer.evaluation.inference import MIN_AUTO_SCALE, auto_scale, flow_picture

    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, (40, 60, 2)).astype(np.float32)  # sub-pixel noise, no motion
    assert auto_scale(noise) == MIN_AUTO_SCALE
    pic = flow_picture(noise)
    assert pic.shape[0] == 28 + 40 + 4 + 48  # title, flow, legend row (colour wheel, scale)
    tile = pic[28:68, :60]
    assert tile.mean() > 235  # pale: per-frame scaling (before) drew the noise fully saturated
    moving = np.zeros((40, 60, 2), np.float32)
    moving[..., 0] = 8.0
    assert flow_picture(moving)[40, 30].tolist() == [255, 0, 0]  # auto: its own 8 px at full colour
    assert flow_picture(moving, max_flow=16.0)[40, 30].tolist() == [255, 127, 127]  # a fixed 16 px scale


def test_annotated_flow_panel_has_titles_and_a_legend_row():
    img = np.zeros((40, 60, 3), np.uint8)
    gt = np.ones((40, 60, 2), np.float32)
    plain = flow_panel(img, img, gt + 0.5, gt, np.ones((40, 60), bool), max_flow=4)
    panel = flow_panel(img, img, gt + 0.5, gt, np.ones((40, 60), bool), max_flow=4, annotate=True)
    assert panel.shape == (28 + 40 + 4 + 48, plain.shape[1], 3)
    tiles = [np.zeros((40, 60, 3), np.uint8)] * 3
    out = annotate_panel(tiles, ["before", "after", "|after - before|"], max_flow=3.0, error_legend=True)
    assert out.shape[0] == 28 + 40 + 4 + 48


def test_mask_picture_titles_carry_the_full_frame_id(monkeypatch):
    seen = []
    real = show.titled
    monkeypatch.setattr(show, "titled", lambda panel, title: seen.append(title) or real(panel, title))
    h, w = 12, 16
    masks = np.zeros((1, h, w), bool)
    masks[0, 2:6, 3:9] = True
    show.frame_picture(np.zeros((h, w, 3), np.uint8), masks, np.array([[3, 2, 5, 3]]),
                       masks[0].astype(np.int32), np.array([0]), "alley_1/frame_0001.png")
    assert seen[0].startswith("alley_1/frame_0001.png")
