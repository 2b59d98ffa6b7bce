import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("UNSAMFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))


SHIPPED_DATA = REPO / "tests" / "data"  # small real samples that travel with the repository


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The larger set of real benchmark samples in ../shared/data (or $UNSAMFLOW_SHARED_DATA).

    A plain clone has no such folder: its tests skip with the reason. CI sets
    UNSAMFLOW_REQUIRE_SHARED_DATA=1 (.ci/run), so there a missing folder fails instead of skipping.
    """
    if not SHARED_DATA.is_dir():
        msg = f"real samples not found at {SHARED_DATA}; set UNSAMFLOW_SHARED_DATA to run this test"
        if os.environ.get("UNSAMFLOW_REQUIRE_SHARED_DATA"):
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED_DATA


@pytest.fixture(scope="session")
def shipped_data() -> Path:
    """The small real samples shipped in tests/data (see tests/data/PROVENANCE.md)."""
    return SHIPPED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: tiny tensors gain nothing from intra-op threads, and on a
    shared 2-core box they lose a lot. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- trainer data: a tiny synthetic training set with mask stores (data engineer) ---------------------------
@dataclass(frozen=True)
class TinyTrainSet:
    """Synthetic scenes (exact GT flow, occlusion, instances) and their mask stores, with index.json.

    root: the data set (layout "synthetic", dataset name "synthetic"); manifest: root/manifest.json;
    stores: the store directory (one store per sequence); derive: the key-object thresholds used."""

    root: Path
    manifest: Path
    stores: Path
    derive: dict


TINY_DERIVE = {"min_h": 8, "max_h": 64, "min_w": 8, "max_w": 128, "min_fill": 0.3, "min_overlaps": 1}


def write_instance_stores(root: Path, out: Path, frames: list[str] | None = None,
                          derive_config: dict | None = None, index: bool = True) -> Path:
    """Mask stores of a synthetic set written directly with StoreWriter, the true instance maps as the masks
    (a perfect segmenter); one store per sequence; `frames` limits the frames stored. index.json is built
    with the manifest (so bad pairs are recorded) unless index=False."""
    from unsamflow.pipeline.derive import DeriveConfig, derive
    from unsamflow.pipeline.flow.io import read_label_png
    from unsamflow.pipeline.images import file_sha256
    from unsamflow.pipeline.manifest import Manifest
    from unsamflow.pipeline.store import StoreWriter, build_index
    from unsamflow.pipeline.synthetic.scenes import instance_records

    cfg = DeriveConfig.from_dict(derive_config or TINY_DERIVE)
    manifest = Manifest.load(root / "manifest.json")
    for seq, seq_frames in manifest.sequences().items():
        ids = [f.id for f in seq_frames if frames is None or f.id in frames]
        if not ids:
            continue
        with StoreWriter(out / f"{seq.split('/')[-1]}.h5", segmenter={"name": "instances", "config": {}},
                         derive_config=cfg.to_dict(), source={"layout": "synthetic", "root": str(root)}) as w:
            for fid in ids:
                inst = read_label_png(root / fid.replace("/clean/", "/instances/"))
                records = instance_records(inst)
                masks = np.stack([r["segmentation"] for r in records])
                full_seg, key = derive(masks, np.array([r["bbox"] for r in records], float), cfg)
                w.add_frame(fid, image_shape=inst.shape, sha256=file_sha256(root / fid), records=records,
                            full_seg=full_seg, key_objects=key)
    if index:
        build_index(out, manifest=manifest)
    return out


@pytest.fixture(scope="session")
def tiny_train_set(tmp_path_factory) -> TinyTrainSet:
    """3 synthetic sequences x 3 frames of 64x128 ("easy": no noise or lighting change, so exact GT flow warps
    frame 2 onto frame 1 closely), 6 pairs, with stores. Read-only: copy it to change it."""
    from unsamflow.pipeline.synthetic import generate_dataset

    base = tmp_path_factory.mktemp("tiny_train_set")
    root = base / "synthetic"
    generate_dataset(root, sequences=3, frames=3, size=(64, 128), seed=0, difficulty="easy")
    stores = write_instance_stores(root, base / "stores")
    return TinyTrainSet(root, root / "manifest.json", stores, TINY_DERIVE)
