"""The GEMM correlation against the definition (81 shifts, one at a time), forward and backward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.images import read_rgb
from unsamflow.trainer.model.correlation import correlation, correlation_reference

pytestmark = pytest.mark.usefixtures("one_thread")


def _both(x1, x2, grad, **kw):
    """Output and input gradients of the fast and the reference correlation for the same upstream grad."""
    results = []
    for fn in (
        lambda a, b: correlation(a, b, **kw),
        lambda a, b: correlation_reference(a, b, kw.get("max_displacement", 4)),
    ):
        a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        out = fn(a, b)
        out.backward(grad)
        results.append((out.detach(), a.grad, b.grad))
    return results


@pytest.mark.parametrize(
    "shape, r, tile",
    [
        ((2, 32, 8, 26), 4, 16),  # 1/32 of 256x832, two images
        ((1, 192, 4, 13), 4, 16),  # coarsest level: smaller than the search window
        ((3, 7, 9, 11), 4, 8),  # odd sizes, tile = 2r
        ((2, 5, 6, 5), 4, 3),  # tile below 2r (raised internally)
        ((1, 4, 1, 1), 4, 16),  # a single pixel
        ((2, 6, 10, 7), 2, 5),
        ((2, 6, 5, 8), 0, 4),  # r = 0: plain channel mean of the product
    ],
)
def test_matches_reference_forward_and_backward(shape, r, tile):
    g = torch.Generator().manual_seed(sum(shape) + r)
    x1, x2 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    grad = torch.randn(shape[0], (2 * r + 1) ** 2, *shape[2:], generator=g)
    (out, g1, g2), (ref, r1, r2) = _both(x1, x2, grad, max_displacement=r, tile=tile)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(g1, r1, atol=1e-5, rtol=0)
    torch.testing.assert_close(g2, r2, atol=1e-5, rtol=0)


def test_gradcheck_double():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    x2 = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: correlation(a, b, 2, 4), (x1, x2))


def test_gradient_to_one_input_only_and_non_contiguous_inputs():
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(2, 9, 12, 8, generator=g).permute(0, 1, 3, 2)  # non-contiguous (2, 9, 8, 12)
    x2 = torch.randn(2, 9, 8, 12, generator=g).requires_grad_()
    grad = torch.randn(2, 81, 8, 12, generator=g)
    correlation(x1, x2).backward(grad)
    x2r = x2.detach().clone().requires_grad_()
    correlation_reference(x1, x2r).backward(grad)
    torch.testing.assert_close(x2.grad, x2r.grad, atol=1e-5, rtol=0)


def test_channel_order_on_a_real_image(shared_data):
    """A real frame against itself shifted by (dx, dy) = (3, -2): costs peak in channel (dy+4)*9 + dx+4."""
    rgb, _ = read_rgb(shared_data / "sintel/training/final/alley_1/frame_0002.png")
    img = torch.from_numpy(np.ascontiguousarray(rgb[100:164, 300:396])).permute(2, 0, 1).float()[None] / 255
    # Features: the 5x5 RGB patch around each pixel, centred and unit-length, so a pixel matches itself best.
    feat = F.unfold(img, 5, padding=2).view(1, 75, 64, 96)
    feat = F.normalize(feat - feat.mean(1, keepdim=True), dim=1)
    dx, dy = 3, -2
    shifted = torch.roll(feat, shifts=(dy, dx), dims=(2, 3))  # shifted(p + d) = feat(p)
    best = correlation(feat, shifted).argmax(dim=1)[0, 8:-8, 8:-8]
    assert (best == (dy + 4) * 9 + (dx + 4)).float().mean() > 0.95


def test_bad_shapes_are_refused():
    with pytest.raises(BadInputError, match=r"one shape.*\(1, 3, 4, 4\).*\(1, 3, 4, 5\)"):
        correlation(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(BadInputError, match="max_displacement"):
        correlation(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), max_displacement=-1)


def test_mixed_precision_inputs_are_promoted():
    x1 = torch.randn(1, 3, 5, 6, dtype=torch.bfloat16)
    x2 = torch.randn(1, 3, 5, 6)
    out = correlation(x1, x2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, correlation_reference(x1.float(), x2), atol=1e-5, rtol=0)
