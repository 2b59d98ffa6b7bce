"""One canonical JSON form, so that equal configurations, manifests and records hash and compare equal."""

from __future__ import annotations

import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace; values JSON cannot hold (paths, numpy scalars) become strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def json_roundtrip(obj: Any) -> Any:
    """`obj` as it reads back from its canonical JSON (tuples -> lists, paths -> strings)."""
    return json.loads(canonical_json(obj))
