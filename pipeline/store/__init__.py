"""The mask store: the one file format between the pipeline and the trainer.

`schema` describes the HDF5 layout and holds `FrameMasks`; `writer` builds a store atomically;
`reader` reads one frame at a time (safe in DataLoader workers); `codec` is the per-mask run-length
encoding; `index` maps frame ids to (store, row) over a folder of stores; `integrity` records each
store's sha256 beside it at commit and checks it before HDF5 parses the file.
"""

from unsamflow.pipeline.store import codec
from unsamflow.pipeline.store.index import INDEX_NAME, Index, build_index, store_files
from unsamflow.pipeline.store.reader import MaskStore
from unsamflow.pipeline.store.schema import FORMAT_NAME, FORMAT_VERSION, FrameMasks
from unsamflow.pipeline.store.writer import StoreWriter

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "INDEX_NAME", "FrameMasks", "Index", "MaskStore", "StoreWriter",
           "build_index", "codec", "store_files"]
