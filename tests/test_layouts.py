"""Layout scanners on the real samples in shared/data, on tmp trees, and the `manifest` command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from unsamflow.pipeline.cli import main
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.layouts import LAYOUTS, check_expected, natural_key, scan
from unsamflow.pipeline.layouts.expected import COUNT_FIELDS, DATA_MANIFESTS, ENTRY_FIELDS
from unsamflow.pipeline.manifest import Manifest


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def assert_consistent(m: Manifest) -> None:
    """Every id exists inside the root, pairs join frames of one sequence, GT paths exist."""
    root = Path(m.root)
    seq_of = {f.id: f.sequence for f in m.frames}
    assert len(seq_of) == len(m.frames)
    for f in m.frames:
        assert m.path(f.id).is_file()
    for p in m.pairs:
        assert seq_of[p.frame1] == seq_of[p.frame2]
        for gt in (p.flow, p.occlusion, p.invalid):
            assert gt is None or (root / gt).is_file()


# -- real samples ------------------------------------------------------------------------------


def test_sintel_sample_counts_and_ground_truth(shared_data):
    m = scan("sintel", shared_data / "sintel")
    assert_consistent(m)
    assert m.layout == "sintel" and m.root == str((shared_data / "sintel").resolve())
    assert m.meta["options"] == {"split": "training", "passes": ["clean", "final"]}
    assert m.meta["counts"] == {"frames": 18, "sequences": 8, "pairs": 10, "pairs_with_gt": 8}
    seqs = m.sequences()
    assert list(seqs) == [
        "training/clean/alley_1", "training/clean/cave_2", "training/clean/market_5",
        "training/final/alley_1", "training/final/bandage_1", "training/final/cave_2",
        "training/final/market_5", "training/final/temple_3",
    ]  # fmt: skip
    assert [f.id for f in seqs["training/clean/alley_1"]] == [
        f"training/clean/alley_1/frame_000{i}.png" for i in (1, 2, 3)
    ]
    by_first = {p.frame1: p for p in m.pairs}
    assert by_first["training/clean/alley_1/frame_0001.png"].flow is None  # no GT shipped for 1 -> 2
    temple = by_first["training/final/temple_3/frame_0022.png"]
    assert temple.frame2 == "training/final/temple_3/frame_0023.png"
    assert temple.flow == "training/flow/temple_3/frame_0022.flo"
    assert temple.occlusion == "training/occlusions/temple_3/frame_0022.png"
    assert temple.invalid == "training/invalid/temple_3/frame_0022.png"
    assert scan("sintel", shared_data / "sintel").to_dict() == m.to_dict()  # deterministic


def test_sintel_pass_and_split_options(shared_data):
    final = scan("sintel", shared_data / "sintel", passes="final")
    assert final.meta["counts"] == {"frames": 11, "sequences": 5, "pairs": 6, "pairs_with_gt": 5}
    clean = scan("sintel", shared_data / "sintel", passes=["clean"])
    assert all(f.id.startswith("training/clean/") for f in clean.frames) and len(clean.frames) == 7
    with pytest.raises(BadInputError, match="no sintel frames found.*missing: test"):
        scan("sintel", shared_data / "sintel", split="test")
    with pytest.raises(BadInputError, match="'passes' got 'clear'; choose from clean, final, albedo"):
        scan("sintel", shared_data / "sintel", passes="clear")
    with pytest.raises(BadInputError, match="has no option 'gray'"):
        scan("sintel", shared_data / "sintel", gray=True)


def test_kitti2015_sample(shared_data):
    m = scan("kitti2015", shared_data / "kitti2015")
    assert_consistent(m)
    assert m.frame_ids == ["training/image_2/000000_10.png", "training/image_2/000000_11.png"]
    assert m.frames[0].sequence == "training/image_2/000000"
    (pair,) = m.pairs
    assert (pair.flow, pair.occ_kind) == ("training/flow_noc/000000_10.png", "flow_noc")


def test_kitti2012_sample_colour_and_gray(shared_data):
    m = scan("kitti2012", shared_data / "kitti2012")
    assert_consistent(m)
    assert m.meta["counts"] == {"frames": 4, "sequences": 2, "pairs": 2, "pairs_with_gt": 2}
    assert [p.flow for p in m.pairs] == ["training/flow_noc/000045_10.png", "training/flow_noc/000157_10.png"]
    gray = scan("kitti2012", shared_data / "kitti2012", gray=True)
    assert gray.frame_ids == ["training/image_0/000045_10.png", "training/image_0/000045_11.png"]
    assert gray.pairs[0].occ_kind == "flow_noc"


def test_middlebury_sample_and_expected_counts(shared_data):
    gray = scan("middlebury", shared_data / "middlebury", gray=True)
    assert_consistent(gray)
    assert gray.meta["counts"] == {"frames": 16, "sequences": 8, "pairs": 8, "pairs_with_gt": 8}
    assert gray.pairs[0].flow == "other-gt-flow/Dimetrodon/flow10.flo"
    assert check_expected(gray) == []  # all 8 GT sequences are shipped in gray
    colour = scan("middlebury", shared_data / "middlebury")
    assert [s.split("/")[1] for s in colour.sequences()] == ["Dimetrodon", "RubberWhale", "Venus"]
    (line,) = check_expected(colour)
    assert line.startswith("middlebury other-data: expected 8 pairs with ground truth, found 3")
    assert "missing sequences: Grove2, Grove3, Hydrangea, Urban2, Urban3" in line


def test_folder_scan_of_real_videos(shared_data):
    m = scan("folder", shared_data / "video")
    assert_consistent(m)
    assert list(m.sequences()) == ["davis_flow_demo", "judo"]
    assert [f.id for f in m.sequences()["judo"]] == [f"judo/{i:05d}.jpg" for i in range(10)]
    assert len(m.pairs) == 2 + 9 and m.pairs[2].frame1 == "judo/00000.jpg"
    assert check_expected(m) == []  # nothing is known about plain folders


def test_sintel_sample_mismatch_report(shared_data):
    lines = check_expected(scan("sintel", shared_data / "sintel"))
    assert len(lines) == 2
    clean, final = lines
    assert clean.startswith(
        "sintel training/clean: expected 1064 frames in 23 sequences, found 7 frames in 3 sequences; "
        "expected 1041 pairs, found 4; expected 1041 pairs with ground truth, found 3; "
        "missing sequences: alley_2,"
    )
    assert "alley_1 3/50" in clean and "bandage_1" in clean  # bandage_1 exists only in final
    assert final.startswith("sintel training/final: expected 1064 frames in 23 sequences, found 11 frames")


# -- tmp trees ---------------------------------------------------------------------------------


def test_folder_natural_order_hidden_and_nested(tmp_path):
    touch(tmp_path, "b/frame10.png", "b/frame2.PNG", "b/frame1.jpg", "b/notes.txt", "b/.hidden.png")
    touch(tmp_path, "a/x/img_9.webp", "a/x/img_11.tif", ".cache/frame0.png", "top.bmp")
    m = scan("folder", tmp_path)
    assert m.frame_ids == [
        "top.bmp", "a/x/img_9.webp", "a/x/img_11.tif", "b/frame1.jpg", "b/frame2.PNG", "b/frame10.png",
    ]  # fmt: skip
    assert [f.sequence for f in m.frames] == [".", "a/x", "a/x", "b", "b", "b"]
    assert [(p.frame1, p.frame2) for p in m.pairs] == [
        ("a/x/img_9.webp", "a/x/img_11.tif"),
        ("b/frame1.jpg", "b/frame2.PNG"),
        ("b/frame2.PNG", "b/frame10.png"),
    ]
    assert m.meta["ignored"] == {"count": 1, "examples": ["b/notes.txt"]}
    assert sorted(["frame10", "frame2", "Frame3"], key=natural_key) == ["frame2", "Frame3", "frame10"]


def test_symlinks_inside_the_root_are_followed_wherever_they_lead(tmp_path):
    """Data linked in from another disk is scanned and read; ids stay relative to the root."""
    from unsamflow.pipeline.images import write_png
    from unsamflow.pipeline.manifest import safe_join

    outside = tmp_path / "outside"
    import numpy as np

    for name in ("a.png", "b.png"):
        write_png(outside / "clip" / name, np.full((4, 6, 3), 7, np.uint8))
    root = tmp_path / "root"
    touch(root, "seq/frame1.png")
    (root / "seq" / "frame2.png").symlink_to(outside / "clip" / "a.png")  # a file linked from outside
    (root / "linked").symlink_to(outside / "clip", target_is_directory=True)  # a folder linked from outside
    m = scan("folder", root)
    assert m.frame_ids == ["linked/a.png", "linked/b.png", "seq/frame1.png", "seq/frame2.png"]
    assert m.path("linked/b.png").read_bytes() == (outside / "clip" / "b.png").read_bytes()
    from unsamflow.pipeline.flow import open_dataset

    assert open_dataset("folder", root)[0]["img1"].shape == (4, 6, 3)
    for bad in ("../outside/clip/a.png", "/etc/passwd"):  # ids that climb out are still refused
        with pytest.raises(BadInputError, match="escapes the dataset root"):
            safe_join(root, bad)


def test_flyingchairs_layout_pairs_each_stem_and_folder_never_crosses_stems(shared_data, tmp_path):
    m = scan("flyingchairs", shared_data / "flyingchairs")  # the examples FlowNet ships: -img0, -img1, -gt
    d = "FlyingChairs_examples/0000000"
    assert m.frame_ids == [f"{d}-img0.ppm", f"{d}-img1.ppm"] and m.pairs[0].flow == f"{d}-gt.flo"
    # the release's names (data/NNNNN_img1.ppm, _img2.ppm, _flow.flo) and its train/val split file
    for i in (1, 2, 3):
        touch(tmp_path, f"data/{i:05d}_img1.ppm", f"data/{i:05d}_img2.ppm", f"data/{i:05d}_flow.flo")
    (tmp_path / "FlyingChairs_train_val.txt").write_text("1\n2\n1\n")
    m = scan("flyingchairs", tmp_path)
    assert [(p.frame1, p.frame2, p.flow) for p in m.pairs][0] == (
        "data/00001_img1.ppm", "data/00001_img2.ppm", "data/00001_flow.flo")
    assert len(m.pairs) == 3 and len({f.sequence for f in m.frames}) == 3
    assert [p.frame1 for p in scan("flyingchairs-val", tmp_path).pairs] == ["data/00002_img1.ppm"]
    assert len(scan("flyingchairs", tmp_path, split="train").pairs) == 2
    # the folder layout pairs 00001_img1 -> 00001_img2 but never 00001_img2 -> 00002_img1
    pairs = [(p.frame1, p.frame2) for p in scan("folder", tmp_path).pairs]
    assert pairs == [(f"data/{i:05d}_img1.ppm", f"data/{i:05d}_img2.ppm") for i in (1, 2, 3)]


def test_hd1k_layout(tmp_path):
    touch(tmp_path, *(f"hd1k_input/image_2/000001_{i:04d}.png" for i in range(3)),
          "hd1k_input/image_2/000002_0000.png", "hd1k_input/image_2/000002_0001.png",
          "hd1k_flow_gt/flow_occ/000001_0000.png", "hd1k_flow_gt/flow_occ/000001_0001.png")
    m = scan("hd1k", tmp_path)
    assert len(m.frames) == 5 and len({f.sequence for f in m.frames}) == 2
    assert [(p.frame1.rsplit("/", 1)[1], p.flow) for p in m.pairs] == [
        ("000001_0000.png", "hd1k_flow_gt/flow_occ/000001_0000.png"),
        ("000001_0001.png", "hd1k_flow_gt/flow_occ/000001_0001.png"), ("000002_0000.png", None)]


def test_pairs_list_as_text_csv_and_json(shared_data, tmp_path):
    """Any pairs with ground truth from a list file; paths relative to the list's folder (links followed)."""
    import json

    import numpy as np
    from unsamflow.pipeline.flow import open_dataset
    from unsamflow.pipeline.flow.io import write_mask_png

    (tmp_path / "chairs").symlink_to(shared_data / "flyingchairs" / "FlyingChairs_examples")
    valid = np.ones((384, 512), bool)
    valid[:10] = False
    write_mask_png(tmp_path / "valid.png", valid)
    c = "chairs/0000000"
    (tmp_path / "list.txt").write_text(f"# img1 img2 flow\n{c}-img0.ppm {c}-img1.ppm {c}-gt.flo\n")
    csv_row = f"{c}-img0.ppm,{c}-img1.ppm,{c}-gt.flo,valid.png"
    (tmp_path / "list.csv").write_text(f"img1,img2,gt,valid\n{csv_row}\n")
    (tmp_path / "list.json").write_text(json.dumps([{"img1": f"{c}-img0.ppm", "img2": f"{c}-img1.ppm"}]))
    txt = open_dataset("pairs", tmp_path / "list.txt", gt_only=True)
    csv = open_dataset("pairs", tmp_path / "list.csv", gt_only=True)
    assert len(txt) == len(csv) == 1 and txt[0]["flow"].shape == (384, 512, 2)
    assert txt[0]["valid"].all() and csv[0]["valid"].sum() == valid.sum()
    np.testing.assert_array_equal(txt[0]["flow"], csv[0]["flow"])
    assert len(open_dataset("pairs", tmp_path / "list.json")) == 1
    r = CliRunner().invoke(main, ["manifest", "--layout", "pairs", "--root", str(tmp_path / "list.csv"),
                                  "--out", str(tmp_path / "m.json")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert Manifest.load(tmp_path / "m.json").pairs[0].valid == "valid.png"
    assert len(open_dataset("pairs", tmp_path / "list.json", gt_only=True)) == 0
    # errors name the line and what is wrong
    (tmp_path / "bad.txt").write_text(f"{c}-img0.ppm {c}-nothing.ppm\n")
    with pytest.raises(BadInputError, match=r"bad.txt line 1: img2 .*nothing.ppm.*file not found"):
        open_dataset("pairs", tmp_path / "bad.txt")
    (tmp_path / "abs.csv").write_text(f"img1,img2\n/abs/a.png,{c}-img1.ppm\n")
    with pytest.raises(BadInputError, match=r"abs.csv line 2: img1 '/abs/a.png' must be relative"):
        open_dataset("pairs", tmp_path / "abs.csv")
    (tmp_path / "col.csv").write_text("img1,img2,depth\n")
    with pytest.raises(BadInputError, match="unknown column 'depth'"):
        open_dataset("pairs", tmp_path / "col.csv")


def test_every_command_takes_the_same_dataset_names(shipped_data, tmp_path):
    """ptlflow's short names, the full names and the layout names work in pipeline, evaluate and train."""
    from unsamflow.pipeline.flow import open_dataset
    from unsamflow.trainer.cli import main as trainer_main
    from unsamflow.trainer.data import parse_mix

    sintel = shipped_data / "sintel"
    names = ("sintel-clean", "sintel-clean-training")
    assert len({len(open_dataset(n, sintel, gt_only=True)) for n in names}) == 1
    assert scan("kitti-2015-training", shipped_data / "kitti2015").layout == "kitti2015"
    assert [p.name for p in parse_mix("kitti2015+sintel-clean+flyingchairs")] == [
        "kitti2015", "sintel-clean-training", "flyingchairs"]
    r = CliRunner().invoke(trainer_main, ["evaluate", "--baseline", "zero", "--dataset", "sintel-clean",
                                          "--root", str(sintel)])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = tmp_path / "m.json"
    r = CliRunner().invoke(main, ["manifest", "--layout", "sintel-clean-training", "--root", str(sintel),
                                  "--out", str(out), "--allow-partial"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert Manifest.load(out).meta["options"]["passes"] == ["clean"]


def test_numbered_layouts_do_not_pair_across_gaps(tmp_path):
    touch(tmp_path, *(f"training/clean/s/frame_000{i}.png" for i in (1, 2, 4, 5)))
    touch(tmp_path, "training/flow/s/frame_0002.flo", "training/flow/s/frame_0004.flo")
    m = scan("sintel", tmp_path, passes="clean")
    assert [(p.frame1[-8:-4], p.frame2[-8:-4], p.flow) for p in m.pairs] == [
        ("0001", "0002", None),
        ("0004", "0005", "training/flow/s/frame_0004.flo"),
    ]


def test_kitti_prefers_flow_occ_and_multiview(tmp_path):
    touch(tmp_path, *(f"training/image_2/000007_{i:02d}.png" for i in (9, 10, 11, 12)))
    touch(tmp_path, "training/flow_noc/000007_10.png", "training/flow_occ/000007_10.png")
    touch(tmp_path, "training/image_2/README.txt")
    m = scan("kitti2015", tmp_path)
    assert m.frame_ids == ["training/image_2/000007_10.png", "training/image_2/000007_11.png"]
    assert (m.pairs[0].flow, m.pairs[0].occ_kind) == ("training/flow_occ/000007_10.png", "flow_occ")
    mv = scan("kitti2015", tmp_path, multiview=True)
    assert len(mv.frames) == 4 and {f.sequence for f in mv.frames} == {"training/image_2/000007"}
    assert [(p.frame1[-6:-4], p.frame2[-6:-4], p.occ_kind) for p in mv.pairs] == [
        ("09", "10", None),
        ("10", "11", "flow_occ"),
        ("11", "12", None),
    ]
    assert mv.meta["ignored"]["examples"] == ["training/image_2/README.txt"]


def test_complete_trees_match_data_manifests(tmp_path):
    """Trees with the documented counts pass check_expected; one missing frame is reported."""
    sintel = yaml.safe_load((DATA_MANIFESTS / "sintel.yaml").read_text())["expected"][0]["sequence_frames"]
    root = tmp_path / "sintel"
    for seq, n in sintel.items():
        for i in range(1, n + 1):
            touch(root, f"training/final/{seq}/frame_{i:04d}.png")
            if i < n:
                touch(root, f"training/flow/{seq}/frame_{i:04d}.flo")
    m = scan("sintel", root, passes="final")
    assert m.meta["counts"] == {"frames": 1064, "sequences": 23, "pairs": 1041, "pairs_with_gt": 1041}
    assert check_expected(m) == []
    (root / "training/final/ambush_6/frame_0020.png").unlink()
    (line,) = check_expected(scan("sintel", root, passes="final"))
    assert line.startswith("sintel training/final: expected 1064 frames in 23 sequences, found 1063 frames")
    assert line.endswith("sequences with other frame counts (found/expected): ambush_6 19/20")

    kitti = tmp_path / "kitti"
    for s in range(200):
        touch(kitti, f"training/image_2/{s:06d}_10.png", f"training/image_2/{s:06d}_11.png")
        touch(kitti, f"training/flow_occ/{s:06d}_10.png")
    assert check_expected(scan("kitti2015", kitti)) == []
    assert check_expected(scan("kitti2015", kitti, multiview=True)) == []


def test_data_manifests_are_well_formed():
    for name in ("sintel", "kitti2015", "kitti2012", "middlebury"):
        data = yaml.safe_load((DATA_MANIFESTS / f"{name}.yaml").read_text())
        assert data["layout"] == name and name in LAYOUTS and data["tree"]
        for entry in data["expected"]:
            assert set(entry) <= ENTRY_FIELDS and entry["groups"] and set(COUNT_FIELDS) & set(entry)
            seq_frames = entry.get("sequence_frames")
            if seq_frames:
                assert len(seq_frames) == entry["sequences"] and sum(seq_frames.values()) == entry["frames"]
            if "frames" in entry and "pairs" in entry:  # every sequence loses one pair to its last frame
                assert entry["pairs"] == entry["frames"] - entry["sequences"]


def test_scan_errors_name_the_problem(tmp_path):
    with pytest.raises(BadInputError, match="unknown layout 'sintle'; known layouts: sintel, kitti2015"):
        scan("sintle", tmp_path)
    with pytest.raises(BadInputError, match=f"dataset root {tmp_path / 'nope'} does not exist"):
        scan("folder", tmp_path / "nope")
    with pytest.raises(BadInputError, match="no folder frames found"):
        scan("folder", tmp_path)
    with pytest.raises(BadInputError, match="'multiview' must be true or false"):
        scan("kitti2015", tmp_path, multiview="yes")


# -- the command -------------------------------------------------------------------------------


def test_manifest_command_mismatch_partial_and_idempotent(shared_data, tmp_path):
    out = tmp_path / "m.json"
    args = ["manifest", "--layout", "sintel", "--root", str(shared_data / "sintel"), "--out", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and not out.exists()
    assert "18 frames in 8 sequences, 10 pairs (8 with ground truth)" in r.output
    assert "count mismatch: sintel training/clean: expected 1064 frames in 23 sequences" in r.output
    assert "not written. Pass --allow-partial" in r.output

    r = CliRunner().invoke(main, [*args, "--allow-partial"])
    assert r.exit_code == 0, r.output
    assert f"{out}: written" in r.output and "warning:" in r.output
    written = Manifest.load(out)
    assert written.to_dict() == scan("sintel", shared_data / "sintel").to_dict()
    os.utime(out, ns=(0, 0))
    r = CliRunner().invoke(main, [*args, "--allow-partial"])
    assert r.exit_code == 0 and f"{out}: up to date" in r.output
    assert out.stat().st_mtime_ns == 0  # untouched

    r = CliRunner().invoke(main, [*args, "--allow-partial", "--pass", "final"])
    assert r.exit_code == 0 and f"{out}: updated" in r.output
    assert json.loads(out.read_text())["meta"]["options"]["passes"] == ["final"]


def test_manifest_command_complete_dataset_and_bad_option(shared_data, tmp_path):
    out = tmp_path / "mb.json"
    root = str(shared_data / "middlebury")
    args = ["manifest", "--layout", "middlebury", "--root", root]
    r = CliRunner().invoke(main, [*args, "--gray", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert len(Manifest.load(out).pairs) == 8
    r = CliRunner().invoke(main, [*args, "--split", "training", "--out", str(tmp_path / "x.json")])
    assert r.exit_code == 2 and "layout 'middlebury' has no option 'split'" in r.output


def test_synthetic_layout_refuses_a_sintel_tree(shipped_data, tmp_path):
    with pytest.raises(BadInputError, match="not a synthetic set from `pipeline synth`.*like MPI-Sintel"):
        scan("synthetic", shipped_data / "sintel")
    from unsamflow.pipeline.synthetic import generate_dataset

    generate_dataset(tmp_path / "s", sequences=1, frames=2, size=(32, 48), seed=0)
    assert len(scan("synthetic", tmp_path / "s").pairs) == 1


def test_kitti_raw_and_sintel_raw_layouts(tmp_path):
    """The reference's first-phase data: KITTI raw drives (pairs from its list when present) and ARFlow's
    raw Sintel frames."""
    import yaml

    root = tmp_path / "kitti_raw"
    for drive in ("2011_09_26_drive_0001_sync", "2011_09_26_drive_0002_sync"):
        for cam in ("image_02", "image_03"):
            touch(root, *(f"2011_09_26/{drive}/{cam}/data/{i:010d}.png" for i in range(3)))
    touch(root, "2011_09_26/calib_cam_to_cam.txt", "2011_09_26/2011_09_26_drive_0001_sync/oxts/x.txt")
    m = scan("kitti-raw", root)
    assert len(m.frames) == 12 and len({f.sequence for f in m.frames}) == 4 and len(m.pairs) == 8
    assert m.pairs[0].frame1 == "2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000000.png"
    assert len(scan("kitti-raw", root, cameras="image_02").pairs) == 4
    d = "2011_09_26/2011_09_26_drive_0002_sync"
    (root / "kitti_train_2f_sv.txt").write_text(
        f"{d}/image_02/data/0000000000.png {d}/image_02/data/0000000001.png "
        f"{d}/image_03/data/0000000000.png {d}/image_03/data/0000000001.png\n")
    listed = scan("kitti-raw", root)  # the reference's list decides the pairs
    assert [(p.frame1[-28:], p.frame2[-14:]) for p in listed.pairs] == [
        ("image_02/data/0000000000.png", "0000000001.png"),
        ("image_03/data/0000000000.png", "0000000001.png")]
    assert len(scan("kitti-raw", root, list="none").pairs) == 8
    (root / "kitti_train_2f_sv.txt").write_text(f"{d}/image_02/data/0000000000.png {d}/image_02/data/9.png\n")
    with pytest.raises(BadInputError, match=r"kitti_train_2f_sv.txt line 1: .*9.png' is not a frame"):
        scan("kitti-raw", root)
    data = yaml.safe_load((DATA_MANIFESTS / "kitti-raw.yaml").read_text())
    assert data["layout"] == "kitti-raw" and "kitti-raw" in LAYOUTS
    sintel = tmp_path / "sintel_raw"
    touch(sintel, *(f"{scene}/{i:05d}.png" for scene in ("s1", "s2") for i in (1, 2, 10)), "s1/notes.txt")
    m = scan("sintel-raw", sintel)
    assert [p.frame1 for p in m.pairs] == ["s1/00001.png", "s1/00002.png", "s2/00001.png", "s2/00002.png"]
    assert m.meta["ignored"]["examples"] == ["s1/notes.txt"]


def _pfm(path: Path, flow: np.ndarray, little_endian: bool = True) -> None:
    """A PFM file written byte by byte as FlyingThings3D's are: 'PF', W H, scale (< 0: little-endian),
    3 float channels (u, v, 0), rows from the bottom up."""
    h, w = flow.shape[:2]
    data = np.concatenate([flow, np.zeros((h, w, 1), np.float32)], axis=2)[::-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    head = f"PF\n{w} {h}\n{-1.0 if little_endian else 1.0}\n".encode()
    path.write_bytes(head + data.astype("<f4" if little_endian else ">f4").tobytes())


def test_flyingthings3d_layout_and_pfm_flow(tmp_path):
    from unsamflow.pipeline.flow import open_dataset, read_flow
    from unsamflow.pipeline.images import write_png

    scene = "frames_cleanpass/TRAIN/A/0000"
    for i in (6, 7, 8):
        for cam in ("left", "right"):
            write_png(tmp_path / scene / cam / f"{i:04d}.png", np.full((4, 5, 3), i, np.uint8))
    flow = np.arange(40, dtype=np.float32).reshape(4, 5, 2)  # row 0 is the image's top row
    gt = tmp_path / "optical_flow/TRAIN/A/0000/into_future/left"
    _pfm(gt / "OpticalFlowIntoFuture_0006_L.pfm", flow)
    _pfm(gt / "OpticalFlowIntoFuture_0007_L.pfm", -flow, little_endian=False)
    read, valid = read_flow(gt / "OpticalFlowIntoFuture_0006_L.pfm")
    np.testing.assert_array_equal(read, flow)
    assert valid.all() and read[0, 0].tolist() == [0.0, 1.0]
    np.testing.assert_array_equal(read_flow(gt / "OpticalFlowIntoFuture_0007_L.pfm")[0], -flow)
    ds = open_dataset("flyingthings3d-clean-train", tmp_path, gt_only=True)
    assert [p.frame1 for p in ds.pairs] == [f"{scene}/left/0006.png", f"{scene}/left/0007.png"]
    np.testing.assert_array_equal(ds[0]["flow"], flow)
    m = scan("flyingthings3d", tmp_path, cameras="left,right")
    assert len({f.sequence for f in m.frames}) == 2 and sum(p.flow is not None for p in m.pairs) == 2
    (tmp_path / "bad.pfm").write_bytes(b"PF\n5 4\n-1.0\n" + b"\0" * 10)
    with pytest.raises(BadInputError, match="bad.pfm: PFM data is 10 bytes, 4x5x3 needs 240"):
        read_flow(tmp_path / "bad.pfm")
