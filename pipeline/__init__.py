"""unsamflow mask pipeline: manifests, shards, segmenters, Dask execution, HDF5 mask stores."""

from unsamflow import __version__

__all__ = ["__version__"]
