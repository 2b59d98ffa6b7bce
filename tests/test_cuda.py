"""CUDA paths: amp (bf16, fp16) and channels_last training steps, GPU worker pinning, the SAM family on the
GPU with random weights through their real generators, DDP over NCCL at world size 1, the correlation
layer and inference on the GPU.

Marked `cuda` (`pytest -m cuda`; scripts/gpu_check.sh runs them first on a GPU machine); without a CUDA
device every test here skips with that reason.
"""

from __future__ import annotations

import os

import cv2
import pytest
import torch
from test_segmenters import assert_valid_records

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA device (run scripts/gpu_check.sh on a GPU machine)"),
]
KEEP_ALL = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
TINY = [
    "data.crop=[64,128]", "augment.occlusion_crop=[64,64]", "data.workers=0", "data.check=size",
    "augment.key_objects.cache_size=2", "augment.key_objects.per_sample=1", "logging.tensorboard=false",
    "logging.image_every=0", "logging.eval_every=0", "device=cuda", "optim.iterations=8",
]  # fmt: skip


@pytest.mark.parametrize("amp,channels_last", [("bf16", False), ("fp16", False), ("bf16", True),
                                               ("off", True)])  # fmt: skip
def test_training_steps_under_amp_and_channels_last_change_the_weights_finitely(
    tiny_train_set, tmp_path, amp, channels_last
):
    from unsamflow.trainer.config import load_config, stage_starts
    from unsamflow.trainer.engine.run import build_trainer, prepare

    cfg = load_config("cpu-demo", [f"data.roots.synthetic={tiny_train_set.root}",
                                   f"data.masks.synthetic={tiny_train_set.stores}", *TINY, f"amp={amp}",
                                   f"channels_last={str(channels_last).lower()}"])  # fmt: skip
    trainer = build_trainer(prepare(cfg, tmp_path / "run"), with_hooks=False)
    net = trainer.model
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    assert all(v.is_cuda and v.dtype == torch.float32 for v in before.values())  # amp: fp32 master weights
    if channels_last:
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    trainer.iteration = stage_starts(cfg)[-1]  # the last stage: every loss term and pass
    # fp16: GradScaler starts at 2^16 and skips the steps whose gradients overflow until its scale fits
    for _ in range(8 if amp == "fp16" else 2):
        trainer.run_step()
        trainer.iteration += 1
    result = trainer.result
    assert set(result.terms) >= {"photometric", "spatial", "occlusion", "homography"}
    assert all(torch.isfinite(t).all() for t in result.terms.values()), result.terms
    assert result.pseudo.dtype == torch.float32 and torch.isfinite(result.pseudo).all()
    after = net.state_dict()
    for k in before:
        assert torch.isfinite(after[k]).all(), k
    moved = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]
    assert len(moved) > 0.9 * sum(v.is_floating_point() for v in before.values())
    if amp == "fp16":
        assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() > 0


def test_inference_in_bf16_is_close_to_fp32_and_the_correlation_layer_matches_the_cpu():
    from unsamflow.trainer.model import PWCLite, correlation

    torch.manual_seed(0)
    x1, x2 = torch.randn(2, 32, 16, 40), torch.randn(2, 32, 16, 40)
    cpu = correlation(x1, x2, 4)
    gpu = correlation(x1.cuda().requires_grad_(), x2.cuda().requires_grad_(), 4)
    torch.testing.assert_close(gpu.detach().cpu(), cpu, atol=1e-5, rtol=1e-4)
    gpu.sum().backward()

    model = PWCLite(mask_features=True).cuda().eval()
    img1, img2 = torch.rand(1, 3, 128, 192, device="cuda"), torch.rand(1, 3, 128, 192, device="cuda")
    seg = torch.zeros(1, 128, 192, dtype=torch.long, device="cuda")
    seg[:, 40:90, 60:140] = 1
    with torch.inference_mode():
        fp32 = model(img1, img2, seg, seg, with_bw=False)["flows_fw"][0]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(img1, img2, seg, seg, with_bw=False)["flows_fw"][0].float()
    assert fp32.shape == (1, 2, 128, 192) and torch.isfinite(bf16).all()
    assert (bf16 - fp32).abs().mean() < 0.05 * fp32.abs().mean() + 0.05


def test_gpu_workers_are_pinned_and_a_sam_segmenter_there_runs_on_its_device():
    from unsamflow.pipeline.cluster import ClusterConfig, open_cluster

    def where():
        import torch as t
        from unsamflow.pipeline.segmenters.amg_common import resolve_device

        return (os.environ["CUDA_VISIBLE_DEVICES"], t.cuda.device_count(), str(resolve_device("auto", "sam")),
                t.cuda.get_device_name(0))  # fmt: skip

    gpu = torch.cuda.device_count() - 1  # the last device: its id must reach the worker, pinned as cuda:0
    with open_cluster(ClusterConfig(gpus=[gpu], dashboard=None)) as client:
        client.wait_for_workers(1)
        (seen,) = client.run(where).values()
    assert seen[:3] == (str(gpu), 1, "cuda:0")
    assert seen[3] == torch.cuda.get_device_name(gpu)


@pytest.mark.parametrize("backend", ["sam", "sam2", "sam-hq"])
def test_sam_family_runs_its_real_generator_on_the_gpu(backend, tmp_path, shipped_data):
    from unsamflow.pipeline.images import read_rgb
    from unsamflow.pipeline.segmenters import SegmenterSpec, build_segmenter

    if backend == "sam":
        from unsamflow.pipeline.segmenters.sam import write_tiny_sam_checkpoint

        ckpt, model_type = write_tiny_sam_checkpoint(tmp_path / "tiny.pth"), "vit_tiny"
    elif backend == "sam2":
        pytest.importorskip("sam2", reason="sam2 not installed (pip install 'unsamflow[sam2]')")
        from unsamflow.pipeline.segmenters.sam2 import write_smoke_sam2_checkpoint

        ckpt, model_type = write_smoke_sam2_checkpoint(tmp_path / "smoke.pt"), "smoke"
    else:
        pytest.importorskip("segment_anything_hq", reason="segment-anything-hq not installed")
        from unsamflow.pipeline.segmenters.sam_hq import write_smoke_sam_hq_checkpoint

        ckpt, model_type = write_smoke_sam_hq_checkpoint(tmp_path / "smoke.pth"), "smoke"
    image = read_rgb(shipped_data / "kitti2015/training/image_2/000000_10.png")[0]
    image = cv2.resize(image, (310, 94), interpolation=cv2.INTER_AREA)
    extra = {"bfloat16": True} if backend == "sam2" else {}
    seg = build_segmenter(SegmenterSpec(backend, {"checkpoint": str(ckpt), "model_type": model_type,
                                                  "device": "cuda", "points_per_side": 4, **KEEP_ALL,
                                                  **extra}))  # fmt: skip
    assert next(seg.model.parameters()).is_cuda
    records = seg(image)
    assert len(records) >= 4
    assert_valid_records(records, image.shape[:2])


def test_ddp_over_nccl_at_world_size_one_trains_and_reduces(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from unsamflow.trainer.model import PWCLite

    if not dist.is_nccl_available():
        pytest.skip("this torch has no NCCL")
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.cuda.set_device(0)
        model = DistributedDataParallel(PWCLite(mask_features=True).cuda(), device_ids=[0])
        img = torch.rand(2, 3, 64, 128, device="cuda")
        seg = torch.zeros(2, 64, 128, dtype=torch.long, device="cuda")
        out = model(img, img.flip(-1), seg, seg)
        loss = sum(f.abs().mean() for f in out["flows_fw"] + out["flows_bw"])
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        total = torch.tensor([3.0], device="cuda")
        dist.all_reduce(total)
        assert total.item() == 3.0 and dist.get_backend() == "nccl"
    finally:
        dist.destroy_process_group()
