"""A trained network as the flow of `pipeline track` (`--flow-checkpoint RUN`, or `--flow
unsamflow.trainer.evaluation.track_flow:checkpoint_flow -f checkpoint=RUN`).

The pipeline calls flow(new, old) for the displacement of the new frame's pixels to the old frame: the
network's forward flow from `new` to `old`. A model with mask features (+mf) needs both frames' full
segmentations, which a flow of the track stage is not given: such a checkpoint is refused by name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from unsamflow.pipeline.errors import BadInputError


class CheckpointFlow:
    def __init__(self, checkpoint: str | Path, device: str | None = None,
                 test_size: tuple[int, int] | None = None):
        from unsamflow.trainer.evaluation.checkpoints import load_network

        self.predictor, _ = load_network(checkpoint, device=device,
                                         test_size=tuple(test_size) if test_size else None)
        if self.predictor.needs_segs:
            raise BadInputError(f"--flow-checkpoint {checkpoint}: this model has mask features (+mf), which "
                                "need full segmentations the track stage does not pass; use a model "
                                "trained without model.mask_features")

    def __call__(self, new: np.ndarray, old: np.ndarray) -> np.ndarray:
        return self.predictor(new, old)


def checkpoint_flow(checkpoint: str, device: str | None = None,
                    test_size: tuple[int, int] | None = None) -> CheckpointFlow:
    return CheckpointFlow(checkpoint, device, test_size)
