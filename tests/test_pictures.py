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


def test_error_scale_runs_from_black_to_white():
    bar = error_scale(120, 5.0, 30)
    assert bar.shape == (30, 120, 3)
    assert (bar[0, 0] == 0).all() and (bar[0, -1] == 255).all()


def test_annotated_flow_panel_has_titles_and_a_legend_row():
    img = np.zeros((40, 60, 3), np.uint8)
    gt = np.ones((40, 60, 2), np.float32)
    plain = flow_panel(img, img, gt + 0.5, gt, np.ones((40, 60), bool), max_flow=4)
    panel = flow_panel(img, img, gt + 0.5, gt, np.ones((40, 60), bool), max_flow=4, annotate=True)
    assert panel.shape == (28 + 40 + 4 + 48, plain.shape[1], 3)
    tiles = [np.zeros((40, 60, 3), np.uint8)] * 3
    out = annotate_panel(tiles, ["before", "after", "|after - before|"], max_flow=3.0, max_error=5.0)
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
