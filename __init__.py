"""unsamflow: unsupervised optical flow guided by Segment-Anything-style object masks.

Two halves around one file format: `unsamflow.pipeline` turns a dataset into HDF5 mask stores on a
Dask cluster; `unsamflow.trainer` streams frames and masks from those stores to train, evaluate and
refine flow networks. In the repository the halves are the top-level folders `pipeline/` and
`trainer/`; pyproject.toml maps them (and this file, the repository root) into the `unsamflow`
namespace, so an installed copy cannot collide with other distributions' `pipeline` or `trainer`.
"""

__version__ = "0.1.0"
