"""Evaluation and inference: flow predictors (network, zero, DIS) run over flow datasets or frame folders
and videos, frames of any size padded to the network's multiple, metrics aggregated per benchmark."""

from unsamflow.trainer.evaluation.checkpoints import default_device, find_checkpoint, load_network
from unsamflow.trainer.evaluation.evaluator import EvalResult, PairResult, evaluate, output_stem
from unsamflow.trainer.evaluation.inference import InferResult, frame_pairs, infer
from unsamflow.trainer.evaluation.padding import (
    PAD_MODES,
    TEST_SIZES,
    Padder,
    default_test_size,
    parse_test_size,
    resize_flow,
)
from unsamflow.trainer.evaluation.predictors import DISFlow, FlowPredictor, NetworkPredictor, ZeroFlow
from unsamflow.trainer.evaluation.segs import SegmenterSegs, StoreSegs, open_segs
from unsamflow.trainer.evaluation.table import markdown_table, metric_columns, text_table

__all__ = [
    "PAD_MODES",
    "TEST_SIZES",
    "DISFlow",
    "EvalResult",
    "FlowPredictor",
    "InferResult",
    "NetworkPredictor",
    "Padder",
    "PairResult",
    "SegmenterSegs",
    "StoreSegs",
    "ZeroFlow",
    "default_device",
    "default_test_size",
    "evaluate",
    "find_checkpoint",
    "frame_pairs",
    "infer",
    "load_network",
    "markdown_table",
    "metric_columns",
    "open_segs",
    "output_stem",
    "parse_test_size",
    "resize_flow",
    "text_table",
]
