"""The training engine: one step's terms per stage, exact resume after SIGKILL, 2-process gloo, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

pytestmark = pytest.mark.usefixtures("one_thread")

# 64 x 128 frames: crops of the whole frame, occlusion crop 64 x 64, 3 stages over `iterations`
TINY = [
    "data.crop=[64,128]", "augment.occlusion_crop=[64,64]", "data.workers=0", "data.check=size",
    "augment.key_objects.cache_size=2", "augment.key_objects.per_sample=1", "logging.tensorboard=false",
    "logging.image_every=0", "logging.eval_every=0",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def overrides(tiny_train_set, *extra: str) -> list[str]:
    return [f"data.roots.synthetic={tiny_train_set.root}", f"data.masks.synthetic={tiny_train_set.stores}",
            *TINY, *extra]  # fmt: skip


def tiny_config(tiny_train_set, *extra: str):
    from unsamflow.trainer.config import load_config

    return load_config("cpu-demo", overrides(tiny_train_set, *extra))


def cli(args: list[str]):
    from unsamflow.trainer.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


def train_cmd(tiny_train_set, out: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "cpu-demo", *overrides(tiny_train_set, *extra), "--out", str(out)]


# --- one step -------------------------------------------------------------------------------------


def test_one_step_terms_per_stage_and_key_objects_pasted(tiny_train_set, tmp_path):
    from unsamflow.trainer.engine.run import build_trainer, prepare

    cfg = tiny_config(tiny_train_set, "optim.iterations=4")
    trainer = build_trainer(prepare(cfg, tmp_path / "run"), with_hooks=False)
    batch = trainer.data.next()
    objective, model = trainer.objective, trainer.model
    want = [{"photometric"}, {"photometric", "spatial", "occlusion"},
            {"photometric", "spatial", "occlusion", "homography"}]  # fmt: skip
    for stage, terms in zip(cfg.stages, want, strict=True):
        result = objective(model, batch, stage)
        assert set(result.terms) == terms
        assert all(torch.isfinite(v) for v in result.terms.values())
        assert result.pasted is None  # the cache is still empty
        result.loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        model.zero_grad()
    # stage 0 is L1 + SSIM, stage 1 census: the same flows give different photometric losses
    out = objective.forward(model, batch["img1"], batch["img2"], batch["full_seg1"], batch["full_seg2"])
    l1_ssim = objective.photometric(batch["img1"], batch["img2"], out, cfg.stages[0])[0]
    census = objective.photometric(batch["img1"], batch["img2"], out, cfg.stages[1])[0]
    assert not torch.isclose(l1_ssim, census)
    # fill the cache (capacity 2, batch 2: the tiny set's frames all hold key objects)
    while not objective.cache.full:
        objective.push_key_objects(trainer.data.next(), objective(model, batch, cfg.stages[0]))
    result = objective(model, batch, cfg.stages[2])
    assert result.pasted is not None and not torch.equal(result.pasted[0], result.extras["img1a"])
    # the loop runs steps across stage boundaries (starts at 25 % and 75 % of 4 iterations)
    trainer.train()
    assert trainer.iteration == 4 and trainer.stage_index == 2
    assert {"data", "forward", "backward", "optimizer", "augmentation", "loss_homography"} <= set(
        trainer.step_times)


def test_stage_occlusion_estimate_range_then_forward_backward():
    """The reference estimates occlusion by the range map in stage 0 and by forward-backward
    consistency from stage 1 (occ_from_back false); the stage's occ_method reaches the loss."""
    from unsamflow.trainer.config import load_config
    from unsamflow.trainer.engine.objective import Objective
    from unsamflow.trainer.engine.timing import PhaseTimer
    from unsamflow.trainer.losses import occlusion_fb, occlusion_range

    for preset in ("kitti-base", "sintel-aug-hg-mf"):
        cfg = load_config(preset)
        assert [s.occ_method or cfg.loss.occlusion for s in cfg.stages] == ["range", "fb", "fb"]
    objective = Objective(cfg, torch.Generator(), None, PhaseTimer())
    img = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    f12 = torch.zeros(1, 2, 64, 128)
    f12[:, 0] = 3.0  # both flows point right: inconsistent, yet frame 2 covers most of frame 1
    flows = [f12[..., :: 2**i, :: 2**i] / 2**i for i in range(5)]
    out = {"flows_fw": flows, "flows_bw": [f.clone() for f in flows]}
    occ0 = objective.photometric(img, img, out, cfg.stages[0])[1]
    occ1 = objective.photometric(img, img, out, cfg.stages[1])[1]
    assert torch.equal(occ0, occlusion_range(f12)) and torch.equal(occ1, occlusion_fb(f12, f12))
    assert not torch.equal(occ0, occ1)


def test_training_evaluation_uses_the_datasets_test_size(tiny_train_set, monkeypatch):
    """The evaluation during training resizes frames to the method's test size of the dataset (KITTI
    256x832, Sintel 448x1024), as `evaluate` does by default, not the native size."""
    from unsamflow.trainer.engine.run import build_evaluator, model_args
    from unsamflow.trainer.evaluation import padding, predictors
    from unsamflow.trainer.model import PWCLite

    seen = []

    class Recording(predictors.NetworkPredictor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.test_size)

    monkeypatch.setitem(padding.TEST_SIZES, "synthetic", (64, 64))
    monkeypatch.setattr(predictors, "NetworkPredictor", Recording)
    cfg = tiny_config(tiny_train_set, "data.val_dataset=synthetic")
    metrics = build_evaluator(cfg, torch.device("cpu"))(PWCLite(**model_args(cfg)))
    assert seen == [(64, 64)] and metrics["dataset"] == "synthetic"


def test_amp_and_channels_last_refused_on_cpu(tiny_train_set, tmp_path):
    from unsamflow.pipeline.errors import BadInputError
    from unsamflow.trainer.engine.run import prepare

    for opt, msg in (("amp=bf16", "amp: bf16 needs a CUDA device"), ("channels_last=true", "channels_last")):
        with pytest.raises(BadInputError, match=msg):
            prepare(tiny_config(tiny_train_set, opt), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --- exact resume after SIGKILL -------------------------------------------------------------------


def test_sigkill_and_resume_equals_uninterrupted_run(tiny_train_set, tmp_path):
    """A run killed (SIGKILL) after its checkpoint of iteration 2 and resumed ends with the same weights,
    optimiser and key-object cache as a run that never stopped (stage 2 pastes objects by then)."""
    extra = ("optim.iterations=6", "logging.checkpoint_every=2", "logging.every=1", "data.workers=1",
             "data.val_dataset=synthetic", "logging.eval_every=2", "logging.tensorboard=true",
             "logging.image_every=3")  # fmt: skip
    cmd = [sys.executable, "-m", "unsamflow.trainer"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = subprocess.Popen(cmd + train_cmd(tiny_train_set, killed, *extra), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    target, deadline = killed / "checkpoints" / "ckpt_0000002.pt", time.monotonic() + 120
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.exists(), proc.stdout.read().decode()
    ran = subprocess.run(cmd + train_cmd(tiny_train_set, full, *extra), env=ENV, capture_output=True,
                         text=True)  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    from unsamflow.trainer.engine import load_checkpoint
    from unsamflow.trainer.engine.run import latest_checkpoint

    # killed mid-run (latest.pt may lag: the kill can land between the file and the link)
    assert load_checkpoint(latest_checkpoint(killed / "checkpoints"))["iteration"] < 6
    resumed = subprocess.run(cmd + ["train", "--out", str(killed), "--resume"], env=ENV, capture_output=True,
                             text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "trained 6 iterations (resumed at" in resumed.stdout
    a, b = (load_checkpoint(d / "checkpoints" / "ckpt_0000006.pt") for d in (full, killed))
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert a["data"] == b["data"] and a["stage"] == b["stage"] == 2
    torch.testing.assert_close(b["key_cache"]["objects"], a["key_cache"]["objects"])
    torch.testing.assert_close(b["rng"]["generators"]["augment"], a["rng"]["generators"]["augment"])
    # metrics.jsonl: the killed run's lines past its checkpoint were dropped on resume
    def lines(run: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(x).items() if k != "eval_seconds"}
                for x in (run / "metrics.jsonl").read_text().splitlines()]  # fmt: skip

    assert [m["iteration"] for m in lines(full)] == [2, 4, 6]
    for a_line, b_line in zip(lines(full), lines(killed), strict=True):
        assert b_line.pop("dataset") == a_line.pop("dataset")
        assert b_line == pytest.approx(a_line, rel=1e-5)
    # the run folder: resolved config, checkpoints, TensorBoard events, one summary line
    assert (full / "config.yaml").is_file() and "trained 6 iterations in" in ran.stdout
    assert any((full / "tensorboard").iterdir())
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == [
        "ckpt_0000002.pt", "ckpt_0000002.pt.sha256", "ckpt_0000004.pt", "ckpt_0000004.pt.sha256",
        "ckpt_0000006.pt", "ckpt_0000006.pt.sha256", "latest.pt", "latest.pt.sha256"]


# --- distributed ----------------------------------------------------------------------------------


def _rank_main(rank: int, world: int, init: str, cfg_overrides: list[str], out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from unsamflow.trainer.config import load_config
    from unsamflow.trainer.engine import distributed
    from unsamflow.trainer.engine.run import build_trainer, prepare

    p = prepare(load_config("cpu-demo", cfg_overrides), Path(out) / "run", init_method=init)
    trainer = build_trainer(p, with_hooks=False)
    trainer.train()
    metrics = p.evaluate(trainer.model)
    net = trainer.model.module
    torch.save({"params": net.state_dict(), "metrics": metrics}, Path(out) / f"rank{rank}.pt")
    distributed.cleanup()


def test_two_gloo_processes_hold_identical_weights_and_evaluate_like_one(tiny_train_set, tmp_path):
    from unsamflow.trainer.engine import distributed
    from unsamflow.trainer.evaluation.evaluator import evaluate
    from unsamflow.trainer.evaluation.predictors import NetworkPredictor
    from unsamflow.trainer.model import PWCLite

    over = overrides(tiny_train_set, "optim.iterations=3", "optim.batch_size=4", "data.val_dataset=synthetic")
    init = f"file://{tmp_path / 'rendezvous'}"
    torch.multiprocessing.spawn(_rank_main, args=(2, init, over, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k, v in r0["params"].items():
        assert torch.equal(v, r1["params"][k]), k
    r0["metrics"].pop("eval_seconds"), r1["metrics"].pop("eval_seconds")
    assert r0["metrics"] == r1["metrics"]
    # one process over all pairs gives the same metrics as the two ranks' all-reduced halves
    from unsamflow.pipeline.flow import open_dataset
    from unsamflow.trainer.config import load_config
    from unsamflow.trainer.engine.run import model_args
    from unsamflow.trainer.evaluation.segs import open_segs

    model = PWCLite(**model_args(load_config("cpu-demo", over)))  # the network the ranks trained
    model.load_state_dict(r0["params"])
    dataset = open_dataset("synthetic", tiny_train_set.root, gt_only=True)
    one = evaluate(NetworkPredictor(model), dataset, "synthetic", segs=open_segs(tiny_train_set.stores))
    assert distributed.all_reduce_metrics(one.accumulators["model"]) is one.accumulators["model"]  # 1 process
    for k, v in one.metrics.items():
        assert r0["metrics"][k] == pytest.approx(v, rel=1e-9), k


def test_single_node_torchrun_in_a_private_network_namespace_has_only_loopback(tiny_train_set, tmp_path):
    """torchrun's rendezvous store listens on every interface (measured with torch 2.14: `::`, also with
    --rdzv-endpoint localhost:PORT or --master-addr 127.0.0.1), and it runs a key-value server anyone
    who reaches it can write to. The README's single-node command runs torchrun in its own network
    namespace (`unshare --user --map-root-user --net`), where loopback is the only interface: the real
    trainer trains on 2 gloo processes there."""
    import shutil as sh

    if sh.which("unshare") is None or sh.which("ip") is None:
        pytest.skip("needs util-linux unshare and iproute2 ip")
    over = overrides(tiny_train_set, "optim.iterations=2", "optim.batch_size=4", "logging.checkpoint_every=0")
    train = " ".join(f"'{a}'" for a in [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                        "--nproc-per-node", "2", "-m", "unsamflow.trainer", "train",
                                        "--preset", "cpu-demo", *over, "--out", str(tmp_path / "run")])
    script = f"ip link set lo up || exit 99; ip -o addr show; exec {train}"
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "sh", "-c", script], env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    if proc.returncode == 99 or "unshare: " in proc.stderr[:200]:
        pytest.skip(f"no unprivileged network namespace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    interfaces = [line.split()[1] for line in proc.stdout.splitlines() if line[:1].isdigit() and ": " in line]
    assert interfaces and set(interfaces) == {"lo"}, proc.stdout
    assert "trained 2 iterations" in proc.stdout and (tmp_path / "run" / "checkpoints" / "latest.pt").exists()
    # The README shows single-node torchrun only this way (before: `torchrun --standalone ...` as is).
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    starts = [i for i in range(len(readme)) if readme.startswith("torchrun --standalone", i)]
    assert starts and all("unshare --user --map-root-user --net sh -c 'ip link set lo up && exec "
                          in readme[max(0, i - 120):i].replace("\n", " ") for i in starts), starts


# --- bad input ------------------------------------------------------------------------------------


def test_bad_inputs_fail_clearly_and_write_nothing(tiny_train_set, tmp_path):
    # resume without a run / with a foreign checkpoint
    res = cli(["train", "--out", str(tmp_path / "none"), "--resume"])
    assert res.exit_code == 2 and "holds no checkpoint" in res.output
    assert not (tmp_path / "none").exists()
    foreign = tmp_path / "foreign" / "checkpoints"
    foreign.mkdir(parents=True)
    torch.save({"state_dict": {}}, foreign / "latest.pt")
    res = cli(["train", "--out", str(tmp_path / "foreign"), "--resume"])
    assert res.exit_code == 2 and "is not an unsamflow checkpoint" in res.output
    # a config of another version
    old = tmp_path / "old.yaml"
    old.write_text("base: cpu-demo\nconfig_version: 99\n")
    res = cli(["train", "--preset", str(old), *overrides(tiny_train_set), "--out", str(tmp_path / "old")])
    assert res.exit_code == 2 and "config_version" in res.output and not (tmp_path / "old").exists()
    # an empty data set, and stores that miss frames of the data set
    empty = tmp_path / "empty"
    empty.mkdir()
    res = cli(["train", "--preset", "cpu-demo", *overrides(tiny_train_set), f"data.roots.synthetic={empty}",
               "--out", str(tmp_path / "e")])  # fmt: skip
    assert res.exit_code == 2 and str(empty) in res.output and not (tmp_path / "e").exists()
    from conftest import write_instance_stores
    from unsamflow.pipeline.manifest import Manifest

    ids = [f.id for f in Manifest.load(tiny_train_set.manifest).frames]
    partial = write_instance_stores(tiny_train_set.root, tmp_path / "partial", frames=ids[:3])
    res = cli(["train", "--preset", "cpu-demo", *overrides(tiny_train_set), f"data.masks.synthetic={partial}",
               "--out", str(tmp_path / "p")])  # fmt: skip
    assert res.exit_code == 2 and ids[3] in res.output and not (tmp_path / "p").exists()
    # a folder that already holds a run is not overwritten without --resume
    held = tmp_path / "held"
    (held / "checkpoints").mkdir(parents=True)
    (held / "config.yaml").write_text("x: 1\n")
    (held / "checkpoints" / "ckpt_0000002.pt").write_bytes(b"a checkpoint")
    res = cli(train_cmd(tiny_train_set, held, "optim.iterations=4"))
    assert res.exit_code == 2 and "already holds a run" in res.output and "--resume" in res.output
    assert (held / "config.yaml").read_text() == "x: 1\n"


def test_one_training_per_run_folder_and_a_run_killed_before_its_first_checkpoint(tiny_train_set, tmp_path):
    """Before: two `train` runs on one --out both finished (config.yaml from one, checkpoints from the
    other), --resume of a live run was accepted, a new run deleted a live run's temporaries; and a folder
    with only a config (killed before its first checkpoint) was refused both as new and as --resume."""
    run = tmp_path / "run"
    long_run = train_cmd(tiny_train_set, run, "optim.iterations=10000", "logging.checkpoint_every=0")
    live = subprocess.Popen([sys.executable, "-m", "unsamflow.trainer", *long_run], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run / "config.yaml").exists() and live.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (run / "config.yaml").exists(), live.stderr.read().decode() if live.poll() is not None else ""
        config = (run / "config.yaml").read_text()
        holder = f"{run} is being written by `unsamflow-trainer train` (pid {live.pid} "
        new = train_cmd(tiny_train_set, run, "optim.iterations=2")
        for args in (new, ["train", "--out", str(run), "--resume"]):
            res = cli(args)
            assert res.exit_code == 2 and holder in res.output, res.output
        assert (run / "config.yaml").read_text() == config and not (run / "checkpoints").exists()
    finally:
        live.kill()
        live.wait()
    # Killed before its first checkpoint, in the middle of its first save: a config and a temporary.
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / f".ckpt_0000002.pt.tmp-{live.pid}").write_bytes(b"half a checkpoint")
    res = cli(["train", "--out", str(run), "--resume", "optim.iterations=2"])
    assert res.exit_code == 0, res.output
    assert "holds no checkpoint yet (its run stopped before the first one): starting it from iteration 0" \
        in res.output and "trained 2 iterations in" in res.output, res.output
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".pt")) == \
        ["ckpt_0000002.pt", "latest.pt"]
    # A new run in such a folder starts again, saying so.
    again = tmp_path / "again"
    again.mkdir()
    (again / "config.yaml").write_text(config)
    res = cli(train_cmd(tiny_train_set, again, "optim.iterations=2"))
    assert res.exit_code == 0, res.output
    assert f"{again} holds a run stopped before its first checkpoint (config.yaml only): starting again" \
        in res.output and "iterations: 2" in (again / "config.yaml").read_text()


def test_train_says_how_many_pairs_it_leaves_out_and_why(tiny_train_set, tmp_path):
    """Before: pairs recorded bad in the stores' index were always left out without a word."""
    import shutil

    from unsamflow.pipeline.manifest import Manifest
    from unsamflow.trainer.engine.run import prepare

    stores = tmp_path / "stores"
    shutil.copytree(tiny_train_set.stores, stores)
    pair = Manifest.load(tiny_train_set.manifest).pairs[0]
    index = json.loads((stores / "index.json").read_text())
    index["bad_pairs"] = [{"frame1": pair.frame1, "frame2": pair.frame2,
                           "reason": f"frame {pair.frame2!r} is bad: unreadable"}]  # fmt: skip
    (stores / "index.json").write_text(json.dumps(index))
    p = prepare(tiny_config(tiny_train_set, f"data.masks.synthetic={stores}"), tmp_path / "run")
    note = next(n for n in p.notes if n.startswith("data: "))
    assert note.startswith("data: 1 of 6 pairs left out as recorded bad in the mask stores' index (1 for a "
                           f"bad frame); e.g. {pair.frame1!r} -> {pair.frame2!r}"), note
    assert len(p.train_set.skipped) == 1


def test_metrics_jsonl_truncated_on_resume(tmp_path):
    from unsamflow.trainer.engine.logging import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"iteration": i, "epe": 1.0}) + "\n" for i in (2, 4, 6)))
    truncate_metrics(path, 4)
    assert [json.loads(x)["iteration"] for x in path.read_text().splitlines()] == [2, 4]


def test_checkpoint_files_refuse_foreign_and_other_versions(tmp_path):
    from unsamflow.pipeline.errors import BadInputError
    from unsamflow.trainer.engine import load_checkpoint, model_from_checkpoint, save_checkpoint
    from unsamflow.trainer.model import PWCLite

    net = PWCLite(num_levels=2)
    path = save_checkpoint(tmp_path / "c.pt", {"config": {"seed": 3}, "model_args": {"num_levels": 2},
                                               "model": net.state_dict()})  # fmt: skip
    assert not list(tmp_path.glob(".*"))  # no temporary left behind
    model, cfg = model_from_checkpoint(path)
    assert cfg == {"seed": 3} and not model.training
    for k, v in net.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    state = torch.load(path, weights_only=True)
    torch.save({**state, "format_version": 2}, tmp_path / "v2.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    bad = {"v2.pt": "format version 2", "junk.pt": "cannot be read", "none.pt": "does not exist"}
    for name, msg in bad.items():
        with pytest.raises(BadInputError, match=msg):
            load_checkpoint(tmp_path / name)


def test_checkpoint_checksum_is_written_and_checked_on_load(tmp_path, capfd):
    """Before: a flipped byte changed a weight by 0.0078 and `train --resume`, `evaluate`, `infer` and
    `report` all loaded it (they load through load_checkpoint / model_from_checkpoint)."""
    import hashlib

    from unsamflow.pipeline.errors import BadInputError
    from unsamflow.trainer.engine import load_checkpoint, model_from_checkpoint, save_checkpoint
    from unsamflow.trainer.engine.hooks import link_latest
    from unsamflow.trainer.model import PWCLite

    net = PWCLite(num_levels=2)
    path = save_checkpoint(tmp_path / "ckpt_0000001.pt", {"config": {}, "model_args": {"num_levels": 2},
                                                          "model": net.state_dict()})  # fmt: skip
    side = tmp_path / "ckpt_0000001.pt.sha256"
    assert side.read_text() == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  ckpt_0000001.pt\n"
    latest = link_latest(path)
    assert (tmp_path / "latest.pt.sha256").read_text().split()[0] == side.read_text().split()[0]
    load_checkpoint(latest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the weights: torch itself reads the file without complaint
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)
    for load in (load_checkpoint, model_from_checkpoint):
        with pytest.raises(BadInputError, match=r"ckpt_0000001.pt is corrupt: its sha256 .* differs"):
            load(path)
    # Without a checksum file (older or foreign): loaded, with one line saying so.
    side.unlink()
    capfd.readouterr()
    load_checkpoint(path)
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "has no checksum file ckpt_0000001.pt.sha256" in err, err


def test_checkpoint_on_a_full_disk_says_so_and_keeps_the_earlier_ones(tiny_train_set, tmp_path):
    """A real full disk: a tmpfs with room for one checkpoint and a half, mounted in a private mount
    namespace (`unshare`, no root needed). Before: torch's "unexpected pos 7522432 vs 7522320" and a
    traceback. Now one line naming the folder, exit 2, the first checkpoint intact, no temporary left."""
    import shutil as sh

    if sh.which("unshare") is None:
        pytest.skip("needs util-linux unshare to mount a small tmpfs")
    from unsamflow.trainer.engine.run import model_args
    from unsamflow.trainer.model import PWCLite

    cmd = [sys.executable, "-m", "unsamflow.trainer"]
    # A checkpoint is about the weights and Adam's two moments: 12 bytes per parameter.
    size = 12 * sum(p.numel() for p in PWCLite(**model_args(tiny_config(tiny_train_set))).parameters())
    disk = tmp_path / "disk"
    disk.mkdir()
    train = " ".join(f"'{a}'" for a in cmd + train_cmd(tiny_train_set, disk / "run", "optim.iterations=2",
                                                            "logging.checkpoint_every=1"))
    check = (f"{sys.executable} -c 'import sys; from unsamflow.trainer.engine import load_checkpoint; "
             f"print(\"kept\", load_checkpoint(sys.argv[1])[\"iteration\"])' "
             f"{disk}/run/checkpoints/latest.pt")
    script = (f"mount -t tmpfs -o size={size * 3 // 2 + (64 << 10)} none {disk} || exit 99; {train}; "
              f"echo rc=$?; ls -a {disk}/run/checkpoints; {check}")
    proc = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script], env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    if proc.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {proc.stderr.strip()}")
    out = proc.stdout + proc.stderr
    assert "rc=2" in out, out
    assert f"error: no space left on {disk}/run/checkpoints for checkpoint ckpt_0000002.pt" in out, out
    assert "Traceback" not in out and "unexpected pos" not in out, out
    listing = proc.stdout.split("rc=2")[1]
    assert "kept 1" in listing and ".tmp-" not in listing and "ckpt_0000002.pt" not in listing, out


# --- runs that grow: short runs, extension on resume, init_from ------------------------------------------


def test_short_run_extended_on_resume_and_a_new_run_initialised_from_it(tiny_train_set, tmp_path):
    from unsamflow.pipeline.errors import BadInputError
    from unsamflow.trainer.engine import load_checkpoint
    from unsamflow.trainer.engine.run import build_trainer, prepare

    run = tmp_path / "run"
    res = cli(train_cmd(tiny_train_set, run, "optim.iterations=2", "logging.checkpoint_every=0",
                        "logging.progress_seconds=0"))  # fmt: skip
    assert res.exit_code == 0 and "trained 2 iterations" in res.output, res.output  # 3 stages in 2 steps
    # no terminal (CliRunner, nohup, SLURM): one whole progress line per report on stderr
    lines = [x for x in res.output.splitlines() if x.startswith("train it ")]
    assert [x.split(" |")[0] for x in lines] == ["train it 1/2 (50%) stage 1", "train it 2/2 (100%) stage 1"]
    assert "photometric=" in lines[1] and "it/s, ETA" in lines[1]
    # --resume with a longer schedule: explicit, logged, recorded in the checkpoint and config.yaml
    res = cli(["train", "--out", str(run), "--resume", "optim.iterations=4"])
    assert res.exit_code == 0, res.output
    assert "schedule extended from 2 to 4 iterations at iteration 2: learning rate" in res.output
    assert "trained 4 iterations (resumed at 2)" in res.output
    ck = load_checkpoint(run / "checkpoints" / "ckpt_0000004.pt")
    assert ck["schedule_extensions"] == [{"at": 2, "from": 2, "to": 4}] and ck["stage"] == 2
    assert "iterations: 4" in (run / "config.yaml").read_text()
    res = cli(["train", "--out", str(run), "--resume", "data.crop=[64,64]"])
    assert res.exit_code == 2 and "data.crop cannot change in a resumed run" in res.output
    res = cli(["train", "--out", str(run), "--resume", "optim.iterations=3"])
    assert res.exit_code == 2 and "before the checkpoint's iteration 4" in res.output
    # a new run from the run's weights only (its folder: the latest checkpoint)
    cfg = tiny_config(tiny_train_set, "optim.iterations=2", f"model.init_from={run}")
    p = prepare(cfg, tmp_path / "ft")
    assert any("initialised the network from" in n for n in p.notes)
    trainer = build_trainer(p, with_hooks=False)
    assert trainer.iteration == 0
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, ck["model"][k]), k
    # strict by default: a file missing some weights and holding others fails listing them by name
    partial = tmp_path / "partial.pt"
    from unsamflow.trainer.engine.checkpoint import save_checkpoint

    weights = {k: v for k, v in ck["model"].items() if not k.startswith("upsampler.")}
    weights["extra.weight"] = torch.zeros(3)
    save_checkpoint(partial, {"config": {}, "model_args": {}, "model": weights})
    res = cli(train_cmd(tiny_train_set, tmp_path / "ft2", f"model.init_from={partial}"))
    assert res.exit_code == 2 and "missing" in res.output and "upsampler." in res.output, res.output
    assert "unexpected 1: extra.weight" in res.output and not (tmp_path / "ft2").exists()
    p = prepare(tiny_config(tiny_train_set, f"model.init_from={partial}", "model.init_strict=false"),
                tmp_path / "ft3")  # fmt: skip
    assert "left at initial values (missing): upsampler." in " ".join(p.notes)
    # weights of another shape (another model configuration) fail even when not strict
    save_checkpoint(partial, {"config": {}, "model_args": {},
                              "model": {**ck["model"], "conv_1x1.0.0.weight": torch.zeros(1)}})
    with pytest.raises(BadInputError, match="another shape: conv_1x1.0.0.weight"):
        prepare(tiny_config(tiny_train_set, f"model.init_from={partial}", "model.init_strict=false"),
                tmp_path / "ft4")


# --- preemption: SIGTERM / SIGUSR1 -> checkpoint, exit 75; the SLURM script requeues and resumes ----------


def _wait_for_line(stream, prefix: str, limit: float = 180.0) -> list[str]:
    """Lines of `stream` up to the first starting with `prefix` (a crash or the limit ends it early)."""
    seen, deadline = [], time.monotonic() + limit
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(prefix):
            break
    return seen


def test_sigterm_checkpoints_the_last_step_and_exits_75_then_resume_continues(tiny_train_set, tmp_path):
    """SIGTERM to the whole process group, as a scheduler sends it (the DataLoader worker too): the
    worker keeps serving until the checkpoint is written."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "unsamflow.trainer",
           *train_cmd(tiny_train_set, run, "optim.iterations=500", "logging.checkpoint_every=0",
                      "logging.progress_seconds=0", "logging.every=1", "data.workers=1")]  # fmt: skip
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    seen = _wait_for_line(proc.stderr, "train it 2/")
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    err = "".join(seen) + err
    assert proc.returncode == 75, err
    from unsamflow.trainer.engine import load_checkpoint
    from unsamflow.trainer.engine.run import latest_checkpoint

    ck_path = latest_checkpoint(run / "checkpoints")
    n = load_checkpoint(ck_path)["iteration"]
    assert 2 <= n < 500 and f"stopped by SIGTERM after iteration {n}; checkpoint {ck_path}" in err, err
    assert "Traceback" not in err and not list((run / "checkpoints").glob(".*tmp*"))
    res = cli(["train", "--out", str(run), "--resume", f"optim.iterations={n + 1}"])
    assert res.exit_code == 0 and f"trained {n + 1} iterations (resumed at {n})" in res.output, res.output


def test_slurm_script_requeues_on_its_warning_signal_and_the_requeued_job_resumes(tiny_train_set, tmp_path):
    """scripts/train_slurm.sh under SLURM's contract (srun runs the command; `scontrol requeue` requeues;
    --signal=B:USR1 signals the batch script), with the real torchrun and trainer."""
    import socket

    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (stubs / "scontrol").write_text(f'#!/bin/sh\n[ "$1" = show ] && {{ echo localhost; exit 0; }}\n'
                                    f'echo "$@" >> {tmp_path / "scontrol.log"}\n')  # fmt: skip
    for f in stubs.iterdir():
        f.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**ENV, "PATH": f"{stubs}:{Path(sys.executable).parent}:{ENV['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "localhost", "SLURM_NNODES": "1", "GPUS_PER_NODE": "1",
           "RDZV_PORT": str(port)}  # fmt: skip
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_slurm.sh"
    run = tmp_path / "run"
    args = ["cpu-demo", str(run), *overrides(tiny_train_set, "logging.checkpoint_every=0",
                                            "logging.progress_seconds=0", "logging.every=1")]  # fmt: skip
    job = subprocess.Popen(["bash", str(script), *args, "optim.iterations=500"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen = _wait_for_line(job.stderr, "train it 2/")
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 does before the time limit
    _, err = job.communicate(timeout=180)
    err = "".join(seen) + err
    assert job.returncode == 0, err
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"], err
    from unsamflow.trainer.engine import load_checkpoint
    from unsamflow.trainer.engine.run import latest_checkpoint

    n = load_checkpoint(latest_checkpoint(run / "checkpoints"))["iteration"]
    assert 2 <= n < 500 and "stopped by SIGTERM" in err, err
    # the requeued job: same command (a larger optim.iterations extends the run); finishes, no requeue
    (tmp_path / "scontrol.log").unlink()
    again = subprocess.run(["bash", str(script), *args, f"optim.iterations={n + 1}"], env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"trained {n + 1} iterations (resumed at {n})" in again.stdout
    assert not (tmp_path / "scontrol.log").exists()


# --- data phases (the reference's raw frames first, then the benchmark sets) ------------------------------


def test_data_phases_switch_at_their_start_and_a_resumed_run_continues_each(tiny_train_set, tmp_path):
    """data.dataset 'synthetic > 0.5 synthetic*2': the second mix (twice as many samples) from iteration 2
    of 4. Checkpoints record each phase's position; a run resumed at the switch ends as the one that never
    stopped."""
    import shutil

    from unsamflow.trainer.engine import load_checkpoint

    phases = "data.dataset=synthetic > 0.5 synthetic*2"
    full = tmp_path / "full"
    res = cli(train_cmd(tiny_train_set, full, "optim.iterations=4", "logging.checkpoint_every=2", phases))
    assert res.exit_code == 0, res.output
    assert "data phase 1 from iteration 2: synthetic*2 (12 samples" in res.output
    ck2, ck4 = (load_checkpoint(full / "checkpoints" / f"ckpt_000000{i}.pt") for i in (2, 4))
    assert ck2["data"]["phase"] == 0 and ck2["data"]["phases"][1] == {"epoch": 0, "position": 0}
    assert ck4["data"]["phase"] == 1 and ck4["data"]["phases"][1]["position"] > 0
    assert ck4["data"]["phases"][0] == ck2["data"]["phases"][0]  # phase 0 stopped where it was
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    for name in ("ckpt_0000004.pt", "ckpt_0000004.pt.sha256", "latest.pt", "latest.pt.sha256"):
        (resumed / "checkpoints" / name).unlink(missing_ok=True)
    res = cli(["train", "--out", str(resumed), "--resume"])
    assert res.exit_code == 0 and "resumed at 2" in res.output, res.output
    again = load_checkpoint(resumed / "checkpoints" / "ckpt_0000004.pt")
    assert again["data"] == ck4["data"]
    for k, v in ck4["model"].items():
        torch.testing.assert_close(again["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_phased_stream_follows_the_iteration_and_never_goes_back_after_an_extension():
    from unsamflow.trainer.engine.loop import BatchStream
    from unsamflow.trainer.engine.phases import PhasedStream, phase_starts

    def streams():  # two BatchStreams over 3-batch epochs, each batch naming its phase
        return [BatchStream(lambda e, skip, n=name: [{"phase": n}] * (3 - skip), torch.device("cpu"))
                for name in ("raw", "mv")]  # fmt: skip

    it = {"n": 0}
    switched: list[int] = []
    s = PhasedStream(streams(), phase_starts([0.0, 0.5], 8), lambda: it["n"], switched.append)
    seen = []
    for n in range(8):
        it["n"] = n
        seen.append(s.next()["phase"])
    assert seen == ["raw"] * 4 + ["mv"] * 4 and switched == [1]
    assert s.state_dict()["phases"] == [{"epoch": 1, "position": 1}, {"epoch": 1, "position": 1}]
    extended = PhasedStream(streams(), phase_starts([0.0, 0.5], 16), lambda: 6)
    assert extended.next()["phase"] == "raw"  # iteration 6 of 16 is phase 0 by the new starts ...
    extended.floor = 1
    assert extended.next()["phase"] == "mv" and extended.state_dict()["phase"] == 1  # ... but 1 was reached


def _preempted_rank(rank: int, world: int, init: str, cfg_overrides: list[str], out: str) -> None:
    """One rank of a 2-process gloo run; rank 1 alone gets SIGUSR1 after iteration 2."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from unsamflow.trainer.config import load_config
    from unsamflow.trainer.engine import distributed
    from unsamflow.trainer.engine import run as run_module
    from unsamflow.trainer.engine.loop import HookBase
    from unsamflow.trainer.engine.preemption import Preempted

    build = run_module.build_trainer

    class SignalRankOne(HookBase):
        def after_step(self, trainer) -> None:
            if rank == 1 and trainer.iteration == 2:
                os.kill(os.getpid(), signal.SIGUSR1)

    def build_with_signal(p, with_hooks=True):
        trainer = build(p, with_hooks)
        trainer.hooks.insert(0, SignalRankOne())
        return trainer

    run_module.build_trainer = build_with_signal
    p = run_module.prepare(load_config("cpu-demo", cfg_overrides), Path(out) / "run", init_method=init)
    try:
        run_module.train(p)
        stopped = -1
    except Preempted as stop:
        stopped = stop.iteration
    Path(out, f"rank{rank}.txt").write_text(str(stopped))
    distributed.cleanup()


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_checkpoint(tiny_train_set, tmp_path):
    """Under torch.distributed a signal that reaches one rank (rank 1 here) stops all of them after the
    same step, with one checkpoint holding every rank's state (a lone rank would hang in the gather)."""
    over = overrides(tiny_train_set, "optim.iterations=50", "optim.batch_size=4",
                     "logging.checkpoint_every=0")  # fmt: skip
    init = f"file://{tmp_path / 'rendezvous'}"
    torch.multiprocessing.spawn(_preempted_rank, args=(2, init, over, str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["2", "2"]
    from unsamflow.trainer.engine import load_checkpoint

    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "ckpt_0000002.pt")
    assert ck["iteration"] == 2 and ck["world_size"] == 2 and len(ck["other_ranks"]) == 1


def test_a_run_where_nearly_every_pixel_is_occluded_is_warned_of(tiny_train_set, tmp_path):
    """Forward-backward occlusion on flows that are not consistent (here: He-normal init, ~100 px flows)
    marks every pixel occluded; the loss then has nothing to train on and the run collapses: say so."""
    r = cli(train_cmd(tiny_train_set, tmp_path / "fb", "optim.iterations=1", "logging.every=1",
                      "model.init=kaiming", "loss.occlusion=fb", "stages.1.occ_method=fb",
                      "stages.2.occ_method=fb"))  # fmt: skip
    assert r.exit_code == 0, r.output
    text = r.output + (r.stderr if r.stderr_bytes is not None else "")
    assert "warning: at iteration 1 (stage " in text and "are marked occluded" in text, text
    r = cli(train_cmd(tiny_train_set, tmp_path / "range", "optim.iterations=1", "logging.every=1"))
    assert r.exit_code == 0 and "are marked occluded" not in r.output + (r.stderr or "")
