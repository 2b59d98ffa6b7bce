"""Synthetic scenes with exact flow, occlusion and instance ground truth (`scenes`), and the writer
that lays them out on disk as a Sintel-like data set with a manifest (`dataset`)."""

from unsamflow.pipeline.synthetic.dataset import generate_dataset, gt_paths, write_sequence
from unsamflow.pipeline.synthetic.scenes import DIFFICULTIES, Scene, SceneConfig, config_for, make_scene

__all__ = ["DIFFICULTIES", "Scene", "SceneConfig", "config_for", "generate_dataset", "gt_paths", "make_scene",
           "write_sequence"]
