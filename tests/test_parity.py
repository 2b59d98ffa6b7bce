"""Numerical parity with the reference implementation (facebookresearch/UnSAMFlow at 0363aed).

Golden data made by running the reference itself (../shared/reference/parity/, see its README): network
weights in the reference's format with its outputs and gradient norms, and its loss values, visibility
masks, gradients and homography selections per training stage. Our code loads the weights through the
converter (trainer/convert.py) and must give the same numbers at the README's float32 tolerances.
Where the folder is absent the tests skip (CI sets UNSAMFLOW_REQUIRE_SHARED_DATA: there they fail).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.convert import (
    model_args_from_reference,
    our_state_dict_to_reference,
    reference_state_dict_to_ours,
)
from unsamflow.trainer.losses import homography_loss, photometric_loss
from unsamflow.trainer.losses.homography import select_regions
from unsamflow.trainer.model import PWCLite

from tests.conftest import REPO

PARITY = Path(os.environ.get("UNSAMFLOW_PARITY_DATA", REPO.parent / "shared" / "reference" / "parity"))
NETWORKS = ("kitti_base", "kitti_aug+hg+mf")


def _golden(name: str) -> dict:
    path = PARITY / name
    if not path.is_file():
        msg = f"reference golden data not found at {path}; set UNSAMFLOW_PARITY_DATA to run this test"
        if os.environ.get("UNSAMFLOW_REQUIRE_SHARED_DATA"):
            pytest.fail(msg)
        pytest.skip(msg)
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module", params=NETWORKS)
def network(request) -> tuple[dict, PWCLite]:
    gold = _golden(f"network_{request.param}.pt")
    args = model_args_from_reference(gold["state_dict"])
    model = PWCLite(**args)
    model.load_state_dict(reference_state_dict_to_ours(gold["state_dict"]))
    return gold, model


def _inputs(gold: dict) -> tuple[tuple, dict]:
    i = gold["inputs"]
    kw = {}
    if "full_seg1" in i:  # the reference takes (B, 1, H, W) floats holding integer labels
        kw = {"full_seg1": i["full_seg1"][:, 0].long(), "full_seg2": i["full_seg2"][:, 0].long()}
    return (i["img1"], i["img2"]), kw


def test_network_outputs_equal_the_reference(network):
    gold, model = network
    assert model_args_from_reference(gold["state_dict"])["mask_features"] == ("full_seg1" in gold["inputs"])
    args, kw = _inputs(gold)
    with torch.no_grad():
        out = model.eval()(*args, **kw, with_bw=True)
    for ours, ref in (("flows_fw", "flows_12"), ("flows_bw", "flows_21")):
        assert len(out[ours]) == len(gold["outputs"][ref]) == 5
        for level, (a, b) in enumerate(zip(out[ours], gold["outputs"][ref], strict=True)):
            assert a.shape == b.shape, (ours, level)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"{ours} level {level}")


def test_network_gradients_equal_the_reference(network):
    gold, model = network
    args, kw = _inputs(gold)
    model.train().zero_grad()
    out = model(*args, **kw, with_bw=True)
    scalar = out["flows_fw"][0].mean() + out["flows_bw"][0].mean()
    scalar.backward()
    assert float(scalar.detach()) == pytest.approx(gold["train_scalar"], rel=1e-6)
    named = our_state_dict_to_reference(dict(model.named_parameters()))
    assert set(named) == set(gold["grad_norms"])
    for name, p in named.items():
        assert float(p.grad.norm()) == pytest.approx(gold["grad_norms"][name], rel=2e-4, abs=1e-12), name


def test_converter_round_trip_and_refusals(network):
    gold, model = network
    ref = gold["state_dict"]
    back = our_state_dict_to_reference(reference_state_dict_to_ours(ref))
    assert list(back) == list(ref) and all(torch.equal(back[k], ref[k]) for k in ref)
    prefixed = {"module." + k: v for k, v in ref.items()}  # DataParallel / DDP checkpoints
    assert reference_state_dict_to_ours(prefixed).keys() == model.state_dict().keys()
    extra = {**ref, "feature_pyramid_extractor.adj_map_net.0.0.weight": torch.zeros(1)}  # adjacency input
    with pytest.raises(BadInputError, match="adj_map_net.0.0.weight"):
        reference_state_dict_to_ours(extra)


def test_arflow_context_layout_maps():
    """ARFlow keeps the context network as one 7-layer sequence: layers 4..6 are our flow head."""
    ours = PWCLite().state_dict()
    ref = our_state_dict_to_reference(ours)
    arflow = {}
    for k, v in ref.items():
        if k.startswith("context_networks.flow_head."):
            i, rest = k[len("context_networks.flow_head."):].split(".", 1)
            arflow[f"context_networks.convs.{int(i) + 4}.{rest}"] = v
        elif not k.startswith("output_flow_upsampler."):  # ARFlow has no learned upsampler
            arflow[k] = v
    mapped = reference_state_dict_to_ours(arflow)
    assert set(ours) - set(mapped) == {k for k in ours if k.startswith("upsampler.")}
    assert all(torch.equal(mapped[k], ours[k]) for k in mapped)


# --- losses ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def losses() -> dict:
    return _golden("losses.pt")


def _stage_loss(gold: dict, stage: str):
    i, cfg = gold["inputs"], gold["stages"][stage]["loss_cfg_used"]
    fw = [f.clone().requires_grad_(True) for f in i["flows_fw"]]
    bw = [f.clone().requires_grad_(True) for f in i["flows_bw"]]

    def photo(weights):
        occlusion = "range" if cfg["occ_from_back"] else "fb"
        return photometric_loss(i["img1"], i["img2"], fw, bw, occlusion=occlusion, level_weights=weights,
                                w_l1=cfg["w_l1"], w_ssim=cfg["w_ssim"], w_ternary=cfg["w_ternary"])

    ph, occ1, occ2 = photo(cfg["w_ph_scales"])
    total, hg = ph, None
    if cfg.get("smooth_type") == "homography" and cfg["w_sm"] > 0:
        hg = (homography_loss(fw[0], i["seg1"], occ1, ransac_thresh=cfg["ransac_threshold"])
              + homography_loss(bw[0], i["seg2"], occ2, ransac_thresh=cfg["ransac_threshold"])) / 2
        total = ph + cfg["w_sm"] * hg
    total.backward()
    per_level = [float(photo([1.0 if j == k else 0.0 for j in range(5)])[0]) for k in range(5)]
    return {"total": total, "ph": ph, "hg": hg, "occ1": occ1, "occ2": occ2, "fw": fw, "bw": bw,
            "per_level": per_level, "photo": photo}  # fmt: skip


@pytest.mark.parametrize("stage", ["stage0", "stage1"])
def test_photometric_stages_equal_the_reference(losses, stage):
    gold = losses["stages"][stage]
    r = _stage_loss(losses, stage)
    assert float(r["total"]) == pytest.approx(gold["total"], rel=1e-6, abs=1e-6)
    assert float(r["ph"]) == pytest.approx(gold["l_ph"], rel=1e-6, abs=1e-6)
    assert r["per_level"] == pytest.approx(gold["l_ph_per_level_unweighted"], rel=1e-6, abs=1e-6)
    assert torch.equal((1 - r["occ1"].float()).to(torch.uint8), gold["vis_mask1"].to(torch.uint8))
    assert torch.equal((1 - r["occ2"].float()).to(torch.uint8), gold["vis_mask2"].to(torch.uint8))
    torch.testing.assert_close(r["fw"][0].grad, gold["grad_fw0"], atol=1e-6, rtol=0)
    torch.testing.assert_close(r["bw"][0].grad, gold["grad_bw0"], atol=1e-6, rtol=0)
    if stage == "stage0":  # the two parts of L1 + SSIM on their own
        cfg = gold["loss_cfg_used"]
        for part, w in (("l1_part", {"w_l1": cfg["w_l1"], "w_ssim": 0.0}),
                        ("ssim_part", {"w_l1": 0.0, "w_ssim": cfg["w_ssim"]})):  # fmt: skip
            i = losses["inputs"]
            value, _, _ = photometric_loss(i["img1"], i["img2"], i["flows_fw"], i["flows_bw"],
                                           occlusion="range", level_weights=cfg["w_ph_scales"], w_ternary=0.0,
                                           **w)  # fmt: skip
            assert float(value) == pytest.approx(gold[part], rel=1e-6, abs=1e-7), part


def test_homography_stage_equals_the_reference(losses):
    gold = losses["stages"]["stage2"]
    r = _stage_loss(losses, "stage2")
    assert float(r["hg"]) == pytest.approx(gold["l_sm"], rel=2e-6)
    assert float(r["total"]) == pytest.approx(gold["total"], rel=1e-6)
    # the reference's region picks, in its order, from its own occlusion masks
    i = losses["inputs"]
    for b, sel in enumerate(gold["hg_selection"]):
        for seg, occ, key in ((i["seg1"], r["occ1"], "fw"), (i["seg2"], r["occ2"], "bw")):
            counts = torch.bincount(seg[b][occ[b, 0].bool()], minlength=12).tolist()
            assert counts == sel[f"{key}_occ_counts"]
            _, valid, _, labels = select_regions(seg[b].reshape(1, -1), occ[b].reshape(1, -1).bool(), 6)
            assert labels[0][valid[0]].tolist() == sel[f"{key}_selected_ids"]
    # gradients: equal off the homography term's sign noise (README: +-2.44e-6 where residuals are ~0)
    for flows, key, dev in ((r["fw"], "grad_fw0", "fw0_deviates_from_homography"),
                            (r["bw"], "grad_bw0", "bw0_deviates_from_homography")):  # fmt: skip
        g, ref = flows[0].grad, gold[key]
        mask = i[dev][:, None].expand_as(g)
        torch.testing.assert_close(g[mask], ref[mask], atol=1e-6, rtol=0)
        torch.testing.assert_close(g, ref, atol=5e-6, rtol=0)


@pytest.mark.parametrize("case", ["no_ties", "ties"])
def test_homography_cases_equal_the_reference(losses, case):
    gold = losses["hg_cases"][case]
    flow = gold["flow"].clone().requires_grad_(True)
    loss = homography_loss(flow, gold["full_seg"], gold["occ_mask"], ransac_thresh=gold["ransac_threshold"])
    loss.backward()
    assert float(loss) == pytest.approx(gold["loss"], rel=2e-6)
    b = gold["full_seg"].shape[0]
    seg, occ = gold["full_seg"].reshape(b, -1), gold["occ_mask"].reshape(b, -1).bool()
    _, valid, _, labels = select_regions(seg, occ, 6)
    assert [lab[v].tolist() for lab, v in zip(labels, valid, strict=True)] == gold["selected_ids"]
    dev = gold["deviates_from_homography"][:, None].expand_as(flow)
    torch.testing.assert_close(flow.grad[dev], gold["grad_flow"][dev], atol=1e-6, rtol=0)
    # elsewhere only the sign of a ~0 residual may differ: +-1/(B*h*w) per entry
    assert float((flow.grad - gold["grad_flow"]).abs().max()) <= 2.0 / flow[0, 0].numel() / b + 1e-9


# --- optimiser ---------------------------------------------------------------------------------------


def test_optimizer_has_the_references_groups_and_eps():
    """Adam with eps 1e-7, decay 1e-6 on weights, none on biases (the reference's trainer)."""
    from unsamflow.trainer.config import load_config
    from unsamflow.trainer.engine.run import build_optimizer

    cfg = load_config(preset="kitti-aug-hg-mf")
    model = PWCLite(mask_features=True)
    opt, sched = build_optimizer(cfg, model)
    assert all(g["eps"] == 1e-7 for g in opt.param_groups)
    by_decay = {g["weight_decay"]: g["params"] for g in opt.param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(by_decay) == [0.0, 1e-6]
    assert all(names[id(p)].endswith(".weight") for p in by_decay[1e-6])
    assert all(names[id(p)].endswith(".bias") for p in by_decay[0.0])
    assert sum(len(ps) for ps in by_decay.values()) == len(names) == 76
    # OneCycle starts at max_lr / div_factor exactly
    assert opt.param_groups[0]["lr"] == cfg.optim.lr / cfg.optim.div_factor


# --- reference checkpoints through the CLI -----------------------------------------------------------


def _reference_checkpoint(path: Path, mask_features: bool) -> dict:
    """A checkpoint as the reference's trainer saves it (DDP: keys prefixed module.)."""
    torch.manual_seed(3)
    model = PWCLite(mask_features=mask_features)
    sd = {"module." + k: v for k, v in our_state_dict_to_reference(model.state_dict()).items()}
    torch.save({"epoch": 7, "iter": 7000, "state_dict": sd, "optimizer_dict": {}, "scheduler_dict": {},
                "best_error": 1.5}, path)  # fmt: skip
    return model.state_dict()


def test_convert_both_ways_keeps_every_weight(tmp_path):
    from click.testing import CliRunner
    from unsamflow.trainer.cli import main
    from unsamflow.trainer.engine.checkpoint import load_checkpoint, model_from_checkpoint

    weights = _reference_checkpoint(tmp_path / "ref.pth.tar", mask_features=True)
    ref = str(tmp_path / "ref.pth.tar")
    r = CliRunner().invoke(main, ["convert", "--from", "reference", ref, "--preset", "kitti-aug-hg-mf",
                                  "--out", str(tmp_path / "ours.pt")])  # fmt: skip
    assert r.exit_code == 0, r.output
    state = load_checkpoint(tmp_path / "ours.pt")
    assert state["model_args"]["mask_features"] and state["iteration"] == 7000
    assert all(torch.equal(state["model"][k], v) for k, v in weights.items())
    model, config = model_from_checkpoint(tmp_path / "ours.pt")
    assert config["model"]["mask_features"] is True
    r = CliRunner().invoke(main, ["convert", "--to", "reference", str(tmp_path / "ours.pt"),
                                  "--out", str(tmp_path / "back.pth")])  # fmt: skip
    assert r.exit_code == 0, r.output
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert set(back) >= {"epoch", "iter", "state_dict"} and back["iter"] == 7000
    renamed = reference_state_dict_to_ours(back["state_dict"])
    assert all(torch.equal(renamed[k], v) for k, v in weights.items())
    # a preset whose network differs is refused, naming both
    r = CliRunner().invoke(main, ["convert", "--from", "reference", str(tmp_path / "ref.pth.tar"),
                                  "--preset", "kitti-base", "--out", str(tmp_path / "x.pt")])  # fmt: skip
    assert r.exit_code == 2 and "kitti-base" in r.output and "mask feature" in r.output
    assert not (tmp_path / "x.pt").exists()
    r = CliRunner().invoke(main, ["convert", str(tmp_path / "ref.pth.tar"), "--out", str(tmp_path / "y.pt")])
    assert r.exit_code == 2 and "--from reference or --to reference" in r.output


def test_normalized_cost_features_do_not_cross_to_or_from_the_reference(tmp_path):
    """The option adds no weights, so a silent conversion would give other flows: both ways refused."""
    from click.testing import CliRunner
    from unsamflow.trainer.cli import main
    from unsamflow.trainer.engine.checkpoint import save_checkpoint

    _reference_checkpoint(tmp_path / "ref.pth.tar", mask_features=True)
    r = CliRunner().invoke(main, ["convert", "--from", "reference", str(tmp_path / "ref.pth.tar"),
                                  "--preset", "cpu-small", "--out", str(tmp_path / "x.pt")])  # fmt: skip
    assert r.exit_code == 2 and "normalize_corr_features" in r.output and "cpu-small" in r.output
    assert not (tmp_path / "x.pt").exists()
    model = PWCLite(normalize_corr_features=True)
    ours = save_checkpoint(tmp_path / "ours.pt", {"config": {}, "model": model.state_dict(),
                                                  "model_args": {"normalize_corr_features": True}})
    back = tmp_path / "y.pth"
    r = CliRunner().invoke(main, ["convert", "--to", "reference", str(ours), "--out", str(back)])
    assert r.exit_code == 2 and "normalize_corr_features" in r.output and str(ours) in r.output
    assert not back.exists()


def test_evaluate_and_infer_take_a_reference_checkpoint(tmp_path, shipped_data):
    from click.testing import CliRunner
    from unsamflow.trainer.cli import main

    _reference_checkpoint(tmp_path / "ref.pth.tar", mask_features=False)
    r = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(tmp_path / "ref.pth.tar"), "--dataset",
                                  "sintel-clean-training", "--root", str(shipped_data / "sintel"),
                                  "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "reference (UnSAMFlow/ARFlow) checkpoint: converted on load" in r.output and "epe" in r.output
    frames = shipped_data / "sintel/training/clean/alley_1"
    r = CliRunner().invoke(main, ["infer", "--checkpoint", str(tmp_path / "ref.pth.tar"),
                                  str(frames / "frame_0002.png"), str(frames / "frame_0003.png"),
                                  "--out", str(tmp_path / "out"), "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "flow" / "frame_0002.flo").is_file()


def test_an_arflow_checkpoint_without_upsampler_needs_allow_missing(tmp_path):
    from click.testing import CliRunner
    from unsamflow.trainer.cli import main

    _reference_checkpoint(tmp_path / "full.pth", mask_features=False)
    state = torch.load(tmp_path / "full.pth", weights_only=True)
    state["state_dict"] = {k: v for k, v in state["state_dict"].items() if "output_flow_upsampler" not in k}
    torch.save(state, tmp_path / "arflow.pth")
    args = ["convert", "--from", "reference", str(tmp_path / "arflow.pth"), "--out", str(tmp_path / "a.pt")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "no learned upsampler" in r.output
    r = CliRunner().invoke(main, [*args, "--allow-missing"])
    assert r.exit_code == 0, r.output


def test_augmentation_loss_normalises_as_the_reference():
    """mean(err * noc) / (mean(noc) + 1e-7), the reference's ARFlow trainer formula."""
    from unsamflow.trainer.losses.augmentation import masked_flow_loss

    g = torch.Generator().manual_seed(0)
    pred, pseudo = torch.randn(2, 2, 8, 12, generator=g), torch.randn(2, 2, 8, 12, generator=g)
    noc = (torch.rand(2, 1, 8, 12, generator=g) > 0.999).float()  # almost nothing visible: eps matters
    noc[0, 0, 0, 0] = 1.0
    expected = ((pred - pseudo).abs() * noc).mean() / (noc.mean() + 1e-7)
    assert float(masked_flow_loss(pred, pseudo, noc)) == pytest.approx(float(expected), rel=1e-6)
