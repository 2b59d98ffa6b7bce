"""Flow file formats and pictures, on the real files of ../shared/data and on hand-made ones."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
import torch
import torchvision.utils
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.flow.io import (
    KITTI_MAX,
    KITTI_MIN,
    read_flo,
    read_flow,
    read_kitti_flow,
    read_mask_png,
    write_flo,
    write_flow,
    write_kitti_flow,
    write_mask_png,
)
from unsamflow.pipeline.flow.viz import flow_panel, flow_to_color
from unsamflow.pipeline.images import write_png

# PROVENANCE.md: largest flow magnitude (px) and occluded / invalid fractions of each Sintel GT.
SINTEL = {
    "alley_1/frame_0002": (10.6, 0.022, 0.0002),
    "cave_2/frame_0002": (46.4, 0.077, None),
    "market_5/frame_0002": (132.5, 0.124, 0.0009),
    "bandage_1/frame_0035": (10.4, 0.021, None),
    "temple_3/frame_0022": (155.1, 0.319, None),
}
MIDDLEBURY_UNKNOWN = {"Dimetrodon": 0.0475, "Hydrangea": 0.0657, "RubberWhale": 0.0160, "Grove2": 0,
                      "Grove3": 0, "Urban2": 0, "Urban3": 0, "Venus": 0}  # fmt: skip
# file -> (valid fraction, u range, v range)
KITTI = {
    "kitti2015/training/flow_noc/000000_10.png": (0.162, (-184.3, 74.6), (-7.2, 53.3)),
    "kitti2012/training/flow_noc/000045_10.png": (0.224, (-31.0, 49.4), (-2.3, 16.1)),
    "kitti2012/training/flow_noc/000157_10.png": (0.257, (-6.2, 11.6), (-1.2, 3.7)),
}


# -- .flo ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SINTEL)
def test_sintel_flo_and_masks_match_provenance(shared_data, name):
    max_mag, occ_frac, invalid_frac = SINTEL[name]
    flow, valid = read_flo(shared_data / f"sintel/training/flow/{name}.flo")
    assert flow.shape == (436, 1024, 2) and flow.dtype == np.float32
    assert valid.all()
    assert np.linalg.norm(flow, axis=2).max() == pytest.approx(max_mag, abs=0.06)
    occ = read_mask_png(shared_data / f"sintel/training/occlusions/{name}.png", (436, 1024))
    assert occ.mean() == pytest.approx(occ_frac, abs=0.0006)
    invalid = read_mask_png(shared_data / f"sintel/training/invalid/{name}.png", (436, 1024))
    if invalid_frac is not None:
        assert invalid.mean() == pytest.approx(invalid_frac, abs=0.00006)


@pytest.mark.parametrize("seq", MIDDLEBURY_UNKNOWN)
def test_middlebury_unknown_fraction(shared_data, seq):
    flow, valid = read_flo(shared_data / f"middlebury/other-gt-flow/{seq}/flow10.flo")
    assert 1 - valid.mean() == pytest.approx(MIDDLEBURY_UNKNOWN[seq], abs=0.00006)
    assert np.abs(flow).max() < 30  # the ~1.67e9 markers are gone, and only they
    assert (flow[~valid] == 0).all()


def test_flo_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    flow = (rng.standard_normal((7, 5, 2)) * 300).astype(np.float32)
    valid = rng.random((7, 5)) > 0.2
    path = write_flo(tmp_path / "a.flo", flow, valid)
    assert path.stat().st_size == 12 + 8 * 7 * 5
    back, back_valid = read_flo(path)
    np.testing.assert_array_equal(back_valid, valid)
    np.testing.assert_array_equal(back[valid], flow[valid])  # bit-exact float32
    # The header is little-endian magic, width, height as the format says.
    assert struct.unpack("<fii", path.read_bytes()[:12]) == (202021.25, 5, 7)


def test_real_flo_rewrites_byte_identical(shared_data, tmp_path):
    src = shared_data / "middlebury/other-gt-flow/RubberWhale/flow10.flo"
    flow, valid = read_flo(src)
    out = write_flo(tmp_path / "x.flo", flow, valid)
    back, back_valid = read_flo(out)
    np.testing.assert_array_equal(back, flow)
    np.testing.assert_array_equal(back_valid, valid)


def _flo_bytes(w: int, h: int, n_values: int, magic: float = 202021.25) -> bytes:
    return struct.pack("<fii", magic, w, h) + np.zeros(n_values, "<f4").tobytes()


@pytest.mark.parametrize(
    "data, message",
    [
        (_flo_bytes(4, 3, 24, magic=1.0), "magic"),
        (_flo_bytes(4, 3, 23), "truncated"),
        (_flo_bytes(4, 3, 25), "trailing"),
        (_flo_bytes(-4, 3, 0), "nonsense dimensions"),
        (_flo_bytes(4, 10**6, 0), "nonsense dimensions"),
        (b"PIEH", "truncated"),
        (b"", "truncated"),
    ],
)
def test_bad_flo_files_are_refused_by_name(tmp_path, data, message):
    path = tmp_path / "bad.flo"
    path.write_bytes(data)
    with pytest.raises(BadInputError, match=message) as err:
        read_flo(path)
    assert str(path) in str(err.value)


def test_nan_flow_is_invalid(tmp_path):
    flow = np.ones((2, 3, 2), np.float32)
    flow[0, 1, 0] = np.nan
    _, valid = read_flo(write_flo(tmp_path / "n.flo", flow))
    assert valid.sum() == 5 and not valid[0, 1]


# -- KITTI PNG -------------------------------------------------------------------------------------
@pytest.mark.parametrize("rel", KITTI)
def test_kitti_flow_matches_provenance(shared_data, rel):
    frac, (u0, u1), (v0, v1) = KITTI[rel]
    flow, valid = read_kitti_flow(shared_data / rel)
    raw = cv2.imread(str(shared_data / rel), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and flow.shape == raw.shape[:2] + (2,)
    assert valid.mean() == pytest.approx(frac, abs=0.0006)
    u, v = flow[valid, 0], flow[valid, 1]
    assert (u.min(), u.max()) == pytest.approx((u0, u1), abs=0.06)
    assert (v.min(), v.max()) == pytest.approx((v0, v1), abs=0.06)
    np.testing.assert_array_equal(flow * 64, np.round(flow * 64))  # on the 1/64 px grid


def test_kitti_round_trip_to_one_64th(tmp_path):
    rng = np.random.default_rng(1)
    flow = (rng.standard_normal((9, 11, 2)) * 100).astype(np.float32)
    flow[0, 0] = (600.0, -700.0)  # beyond the format's range: clipped, documented
    valid = rng.random((9, 11)) > 0.3
    valid[0, 0] = True
    back, back_valid = read_flow(write_flow(tmp_path / "k.png", flow, valid))
    np.testing.assert_array_equal(back_valid, valid)
    inner = valid.copy()
    inner[0, 0] = False
    assert np.abs(back[inner] - flow[inner]).max() <= 1 / 128 + 1e-6
    assert tuple(back[0, 0]) == (KITTI_MAX, KITTI_MIN)
    assert (back[~valid] == 0).all()
    # Values on the 1/64 grid survive exactly, and the file decodes as 16-bit, 3 channels.
    grid = np.round(flow * 64) / 64
    again, _ = read_kitti_flow(write_kitti_flow(tmp_path / "g.png", np.clip(grid, -500, 500)))
    np.testing.assert_array_equal(again, np.clip(grid, -500, 500))
    raw = cv2.imread(str(tmp_path / "g.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (9, 11, 3)


def test_real_kitti_rewrites_identically(shared_data, tmp_path):
    src = shared_data / "kitti2012/training/flow_noc/000157_10.png"
    flow, valid = read_kitti_flow(src)
    back, back_valid = read_kitti_flow(write_kitti_flow(tmp_path / "r.png", flow, valid))
    np.testing.assert_array_equal(back, flow)
    np.testing.assert_array_equal(back_valid, valid)


def test_kitti_reader_refuses_what_pillow_would_misread(shared_data, tmp_path):
    eight_bit = tmp_path / "8bit.png"
    cv2.imwrite(str(eight_bit), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(BadInputError, match="16-bit") as err:
        read_kitti_flow(eight_bit)
    assert "8bit.png" in str(err.value)
    grey16 = tmp_path / "grey16.png"
    cv2.imwrite(str(grey16), np.zeros((4, 4), np.uint16))
    with pytest.raises(BadInputError, match="3 channels"):
        read_kitti_flow(grey16)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes((shared_data / "kitti2015/training/flow_noc/000000_10.png").read_bytes()[:2000])
    with pytest.raises(BadInputError, match="cut.png"):
        read_kitti_flow(truncated)
    with pytest.raises(BadInputError, match="not found"):
        read_flow(tmp_path / "missing.flo")
    with pytest.raises(BadInputError, match="unknown flow file type"):
        read_flow(tmp_path / "x.exr")  # (.pfm is FlyingThings3D's and is read: test_layouts)


def test_mask_png_round_trip_and_size_check(tmp_path):
    mask = np.eye(5, 6, dtype=bool)
    path = write_mask_png(tmp_path / "m.png", mask)
    assert set(np.unique(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))) == {0, 255}
    np.testing.assert_array_equal(read_mask_png(path), mask)
    with pytest.raises(BadInputError, match="expected 5x7"):
        read_mask_png(path, (5, 7))


# -- pictures --------------------------------------------------------------------------------------
def test_colour_wheel_matches_torchvision(shared_data):
    flow, _ = read_flo(shared_data / "sintel/training/flow/cave_2/frame_0002.flo")
    ours = flow_to_color(flow)
    theirs = torchvision.utils.flow_to_image(torch.from_numpy(flow).permute(2, 0, 1)).permute(1, 2, 0)
    diff = np.abs(ours.astype(int) - theirs.numpy())
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-5  # atan2 may round differently in the last bit


def test_fixed_max_flow_makes_pictures_comparable():
    rng = np.random.default_rng(2)
    flow = rng.standard_normal((6, 7, 2)).astype(np.float32) * 3
    # Same vectors, same scale -> same colours, whatever else is in the picture.
    big = flow.copy()
    big[0, 0] = (50.0, 0.0)
    np.testing.assert_array_equal(flow_to_color(flow, max_flow=10)[1:], flow_to_color(big, max_flow=10)[1:])
    assert not np.array_equal(flow_to_color(flow)[1:], flow_to_color(big)[1:])  # auto scale differs
    # Halving flow and max_flow gives the same picture; vectors beyond max_flow saturate.
    np.testing.assert_array_equal(flow_to_color(flow, max_flow=8), flow_to_color(flow / 2, max_flow=4))
    sat = flow_to_color(np.array([[[20.0, 0.0], [10.0, 0.0]]], np.float32), max_flow=10)
    np.testing.assert_array_equal(sat[0, 0], sat[0, 1])
    assert tuple(flow_to_color(np.zeros((1, 1, 2)), max_flow=1)[0, 0]) == (255, 255, 255)


def test_unknown_pixels_are_black_and_do_not_set_the_scale(shared_data):
    flow, valid = read_flo(shared_data / "middlebury/other-gt-flow/Hydrangea/flow10.flo")
    pic = flow_to_color(flow, valid)
    assert (pic[~valid] == 0).all()
    assert (pic[valid].max(axis=1) > 0).all()
    raw = flow.copy()
    raw[~valid] = 1.6666668e9
    np.testing.assert_array_equal(flow_to_color(raw, valid), pic)


def test_panel_has_five_tiles(shared_data, tmp_path):
    img = np.zeros((20, 30, 3), np.uint8)
    gt = np.ones((20, 30, 2), np.float32)
    panel = flow_panel(img, img, gt + 0.5, gt, np.ones((20, 30), bool), max_flow=4)
    assert panel.shape == (20, 5 * 30 + 4 * 4, 3)
    assert flow_panel(img, img, None, gt).shape == (20, 3 * 30 + 2 * 4, 3)
    path = write_png(tmp_path / "p.png", panel)
    np.testing.assert_array_equal(cv2.imread(str(path))[..., ::-1], panel)
