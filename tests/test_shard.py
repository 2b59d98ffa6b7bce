"""Sharding: balance, every frame exactly once, sequences kept whole or in contiguous chunks, files."""

from __future__ import annotations

import hashlib
import json
import math
import random

import pytest
from click.testing import CliRunner
from unsamflow.pipeline.cli import main
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.layouts import scan
from unsamflow.pipeline.manifest import Frame, Manifest, Pair
from unsamflow.pipeline.shard import manifest_sha256, shard_manifest, sync_shards, write_shards


def synthetic_manifest(lengths: list[int], root: str = "/data") -> Manifest:
    frames, pairs = [], []
    for s, n in enumerate(lengths):
        seq = [Frame(f"seq{s:04d}/frame_{i:04d}.png", f"seq{s:04d}") for i in range(n)]
        frames += seq
        pairs += [Pair(a.id, b.id) for a, b in zip(seq, seq[1:], strict=False)]
    return Manifest("folder", root, frames, pairs, {"counts": {"frames": len(frames)}})


def check_shards(m: Manifest, n: int, shards: list[Manifest]) -> list[int]:
    """The invariants every sharding must keep; returns the shard sizes."""
    order = {f.id: i for i, f in enumerate(m.frames)}
    got = [f.id for s in shards for f in s.frames]
    assert sorted(got, key=order.__getitem__) == m.frame_ids  # every frame exactly once
    assert 1 <= len(shards) <= n and all(s.frames for s in shards)
    target = math.ceil(len(m.frames) / min(n, len(m.frames)))
    sha = manifest_sha256(m)
    for i, s in enumerate(shards):
        assert s.meta == {"shard": i, "num_shards": len(shards), "manifest_sha256": sha}
        assert (s.layout, s.root) == (m.layout, m.root)
        ids = [f.id for f in s.frames]
        assert ids == sorted(ids, key=order.__getitem__)  # manifest order inside a shard
        inside = set(ids)
        assert s.pairs == [p for p in m.pairs if p.frame1 in inside and p.frame2 in inside]
    assert [order[s.frames[0].id] for s in shards] == sorted(order[s.frames[0].id] for s in shards)
    for seq, frames in m.sequences().items():
        parts = [[f.id for f in s.frames if f.sequence == seq] for s in shards]
        parts = [p for p in parts if p]
        if len(frames) <= target:
            assert len(parts) == 1, f"{seq} ({len(frames)} <= target {target}) was split"
        seq_ids = [f.id for f in frames]
        for part in parts:  # each piece is a contiguous run of the sequence
            start = seq_ids.index(part[0])
            assert seq_ids[start : start + len(part)] == part
    return [len(s.frames) for s in shards]


@pytest.mark.parametrize(
    ("lengths", "n", "expected_sizes"),
    [
        ([2] * 200, 8, [50] * 8),  # KITTI-like: perfect
        ([10], 3, [4, 3, 3]),  # one sequence, cut into contiguous near-equal chunks
        ([1000] + [10] * 10, 8, None),  # one huge sequence fills around the small ones
        ([50] * 19 + [21, 33, 20, 40], 8, None),  # Sintel training shape
        ([5, 3], 1, [8]),
        ([3, 2], 4, [1, 1, 1, 2]),
    ],
)
def test_shapes(lengths, n, expected_sizes):
    m = synthetic_manifest(lengths)
    shards = shard_manifest(m, n)
    sizes = check_shards(m, n, shards)
    if expected_sizes is not None:
        assert sizes == expected_sizes
    if lengths[0] == 1000:
        assert max(sizes) - min(sizes) <= 1 and len(sizes) == 8
    if len(lengths) == 23:
        # Sequences of 50 cannot be split (all <= target 133); 3 x 150 + 5 x (100 + small ones) is optimal.
        assert sorted(sizes) == [100, 120, 121, 133, 140, 150, 150, 150]
    assert shard_manifest(m, n) == shards  # deterministic


def test_random_shapes_stay_within_one_sequence_of_balance():
    rng = random.Random(7)
    for _ in range(40):
        lengths = [rng.choice([1, 2, 5, 20, 50, 300]) for _ in range(rng.randint(1, 40))]
        n = rng.randint(1, 12)
        m = synthetic_manifest(lengths)
        sizes = check_shards(m, n, shard_manifest(m, n))
        target = math.ceil(sum(lengths) / min(n, sum(lengths)))
        biggest_whole = max([x for x in lengths if x <= target], default=1)
        assert max(sizes) - min(sizes) <= max(biggest_whole, 1)


def test_more_shards_than_frames_and_bad_counts():
    m = synthetic_manifest([2, 3])
    shards = shard_manifest(m, 8)
    assert check_shards(m, 8, shards) == [1, 1, 1, 1, 1]
    assert shards[0].meta["num_shards"] == 5
    with pytest.raises(BadInputError, match="num_shards must be at least 1"):
        shard_manifest(m, 0)


def test_manifest_sha_is_the_sha_of_its_json():
    m = synthetic_manifest([3, 4])
    canonical = json.dumps(m.to_dict(), sort_keys=True, separators=(",", ":"))
    assert manifest_sha256(m) == hashlib.sha256(canonical.encode()).hexdigest()
    other = synthetic_manifest([3, 4], root="/elsewhere")
    assert manifest_sha256(other) != manifest_sha256(m)


def test_real_sintel_sample(shared_data):
    m = scan("sintel", shared_data / "sintel")
    shards = shard_manifest(m, 3)
    assert check_shards(m, 3, shards) == [6, 6, 6]
    assert sum(len(s.pairs) for s in shards) == len(m.pairs)  # no sequence was split


def test_write_shards_idempotent_resumable_and_refusing(tmp_path):
    m = synthetic_manifest([5, 5, 5, 5])
    out = tmp_path / "shards"
    paths = write_shards(m, 4, out)
    assert [p.name for p in paths] == [f"shard-0000{i}-of-00004.json" for i in range(4)]
    loaded = [Manifest.load(p) for p in paths]
    assert [s.to_dict() for s in loaded] == [s.to_dict() for s in shard_manifest(m, 4)]

    before = [p.stat().st_mtime_ns for p in paths]
    again = sync_shards(m, 4, out)
    assert again.paths == paths and again.written == [] and again.removed == []
    assert [p.stat().st_mtime_ns for p in paths] == before  # no-op

    paths[2].unlink()  # an interrupted run: only the missing shard is written
    assert sync_shards(m, 4, out).written == [paths[2]]

    with pytest.raises(BadInputError, match="shards of another shard count .*--force"):
        write_shards(m, 2, out)
    with pytest.raises(BadInputError, match="shards of a different manifest .*--force"):
        write_shards(synthetic_manifest([5, 5, 5, 6]), 4, out)
    assert [p.stat().st_mtime_ns for p in paths if p != paths[2]] == before[:2] + before[3:]

    forced = sync_shards(m, 2, out, force=True)
    assert [p.name for p in forced.paths] == ["shard-00000-of-00002.json", "shard-00001-of-00002.json"]
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in forced.paths]
    assert len(forced.removed) == 4


def test_shard_command(shared_data, tmp_path):
    manifest_file = tmp_path / "m.json"
    scan("sintel", shared_data / "sintel").save(manifest_file)
    args = ["shard", "--manifest", str(manifest_file), "--out", str(tmp_path / "sh")]
    r = CliRunner().invoke(main, [*args, "--num-shards", "4"])
    assert r.exit_code == 0, r.output
    assert "wrote 4 of 4 shards (4..5 frames each)" in r.output
    r = CliRunner().invoke(main, [*args, "--num-shards", "4"])
    assert r.exit_code == 0 and "4 shards up to date" in r.output
    r = CliRunner().invoke(main, [*args, "--num-shards", "3"])
    assert r.exit_code == 2 and "use --force to replace them, or another directory" in r.output
    r = CliRunner().invoke(main, [*args, "--num-shards", "40", "--force"])
    assert r.exit_code == 0 and "40 shards requested, but 18 frames in 8 sequences fill only 18" in r.output
    assert len(list((tmp_path / "sh").glob("shard-*.json"))) == 18
