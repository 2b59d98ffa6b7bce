"""The augmentation (ARFlow self-supervision) loss: predicted flow against the transformed pseudo-label."""

from __future__ import annotations

import torch
from unsamflow.pipeline.errors import BadInputError


def masked_flow_loss(
    pred: torch.Tensor, pseudo: torch.Tensor, noc: torch.Tensor, eps: float = 0.0, q: float = 1.0
) -> torch.Tensor:
    """mean((|pred - pseudo| + eps)^q * noc) / mean(noc): the per-pixel average over supervised pixels.

    pred, pseudo (B,2,H,W); noc (B,1,H,W) or (B,H,W), 1 where the pseudo-label holds. The reference
    configs use eps 0, q 1 (plain L1, per flow component); ARFlow's paper form is eps 0.01, q 0.4.
    The pseudo-label is detached: gradients reach only the prediction.
    """
    if pred.shape != pseudo.shape or pred.dim() != 4 or pred.shape[1] != 2:
        raise BadInputError(
            f"masked_flow_loss: pred {tuple(pred.shape)} and pseudo {tuple(pseudo.shape)} must "
            f"both be (B,2,H,W)"
        )
    if noc.dim() == 3:
        noc = noc.unsqueeze(1)
    if noc.shape != (pred.shape[0], 1, *pred.shape[2:]):
        raise BadInputError(
            f"masked_flow_loss: noc {tuple(noc.shape)} does not match pred {tuple(pred.shape)}"
        )
    noc = noc.to(pred.dtype)
    err = ((pred - pseudo.detach()).abs() + eps).pow(q) * noc
    return err.mean() / (noc.mean() + 1e-7)  # the reference's 1e-7
