"""Flow on disk and on screen: `.flo` / KITTI PNG I/O (`io`), colour pictures (`viz`) and the flow
datasets that pair frames with ground truth by name (`datasets`)."""

from unsamflow.pipeline.flow.datasets import DATASETS, FlowDataset, open_dataset
from unsamflow.pipeline.flow.io import (
    read_flo,
    read_flow,
    read_kitti_flow,
    read_label_png,
    read_mask_png,
    write_flo,
    write_flow,
    write_kitti_flow,
    write_mask_png,
)
from unsamflow.pipeline.flow.viz import error_to_color, flow_panel, flow_to_color, hstack

__all__ = ["DATASETS", "FlowDataset", "error_to_color", "flow_panel", "flow_to_color", "hstack",
           "open_dataset", "read_flo", "read_flow", "read_kitti_flow", "read_label_png", "read_mask_png",
           "write_flo", "write_flow", "write_kitti_flow", "write_mask_png"]
