"""unsamflow mask pipeline: manifests, shards, segmenters, Dask execution, HDF5 mask stores."""

__version__ = "0.1.0"
