import os
from pathlib import Path

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
