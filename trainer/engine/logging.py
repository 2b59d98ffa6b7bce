"""What a run reports: TensorBoard scalars and pictures, a tqdm bar (or, without a terminal, a progress
line on stderr every `progress_seconds`), and metrics.jsonl.

Only the main process (rank 0) writes. On resume everything logged after the checkpoint's iteration
(by the run that was killed) is dropped first: TensorBoard events by `purge_step`, metrics.jsonl lines
by rewriting the file, so a resumed run's logs read as if it had never stopped.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from unsamflow.pipeline.atomic import write_bytes_atomic
from unsamflow.pipeline.progress import bar_disable

METRICS_FILE = "metrics.jsonl"


def progress_enabled() -> bool:
    """A bar only for people: off when stderr is not a terminal or TQDM_DISABLE is set."""
    return sys.stderr.isatty() and os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true", "yes")


def truncate_metrics(path: Path, after_iteration: int) -> None:
    """Drop metrics.jsonl lines of iterations past `after_iteration` (a killed run's tail)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("iteration", 0) <= after_iteration]
    write_bytes_atomic(path, "".join(f"{line}\n" for line in keep).encode())


class RunLogger:
    """TensorBoard + tqdm + metrics.jsonl of one run; a no-op object on ranks other than 0."""

    def __init__(self, run_dir: str | Path, total: int, start: int = 0, enabled: bool = True,
                 tensorboard: bool = True, progress_seconds: float = 30.0):  # fmt: skip
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.writer = None
        self.bar = None
        self.total, self.start = total, start
        self.progress_seconds = progress_seconds
        self._t0 = self._last_line = time.monotonic()
        if not enabled:
            return
        truncate_metrics(self.run_dir / METRICS_FILE, start)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start or None)
        if progress_enabled():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True,
                            disable=bar_disable())

    def scalars(self, iteration: int, values: dict[str, float], prefix: str = "") -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}{k}", float(v), iteration)

    def step(self, iteration: int, losses: dict[str, float], stage: int | None = None) -> None:
        """Advance the bar by one step and show the current losses; without a bar, print a progress line
        every `progress_seconds` and at the last step (a log file then shows the run is alive)."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
            return
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_line < self.progress_seconds and iteration < self.total:
            return
        self._last_line = now
        print(self.progress_line(iteration, losses, stage, now), file=sys.stderr, flush=True)

    def progress_line(self, iteration: int, losses: dict[str, float], stage: int | None, now: float) -> str:
        """`train it 120/200 (60%) stage 1 | total=0.41 photometric=0.38 | 2.31 it/s, ETA 0:00:34`."""
        from unsamflow.trainer.progress import format_duration

        done = iteration - self.start
        rate = done / max(now - self._t0, 1e-9)
        eta = format_duration((self.total - iteration) / rate) if rate > 0 else "?"
        terms = " ".join(f"{k}={v:.4g}" for k, v in losses.items()) or "-"
        where = f" stage {stage}" if stage is not None else ""
        return (f"train it {iteration}/{self.total} ({100 * iteration / max(self.total, 1):.0f}%){where} | "
                f"{terms} | {rate:.2f} it/s, ETA {eta}")

    def images(self, iteration: int, pictures: dict[str, np.ndarray]) -> None:
        """HxWx3 uint8 pictures (see `step_pictures`)."""
        if self.writer is None:
            return
        for name, pic in pictures.items():
            self.writer.add_image(name, pic, iteration, dataformats="HWC")

    def metrics(self, iteration: int, values: dict[str, Any]) -> None:
        """One JSON line per evaluation in metrics.jsonl, and the same figures as scalars."""
        if not self.enabled:
            return
        line = json.dumps({"iteration": iteration, **values}, sort_keys=True)
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(line + "\n")
        self.scalars(iteration, {k: v for k, v in values.items() if isinstance(v, (int, float))}, "eval/")

    def write(self, message: str) -> None:
        """A line of text that does not break the bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _rgb(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> HxWx3 uint8."""
    return (img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def step_pictures(
    img1: torch.Tensor,
    img2: torch.Tensor,
    seg1: torch.Tensor,
    flow: torch.Tensor,
    occ: torch.Tensor | None = None,
    pasted: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, np.ndarray]:
    """Pictures of the first sample of a batch: frames, full_seg, predicted flow (colour) and
    occlusion; `pasted` = the occlusion pass's frames after key objects were pasted in."""
    from unsamflow.pipeline.flow.viz import flow_to_color, hstack
    from unsamflow.pipeline.show import draw_labels

    pics = {
        "frames": hstack([_rgb(img1[0]), _rgb(img2[0])]),
        "full_seg": draw_labels(seg1[0].detach().cpu().numpy().astype(np.int64)),
        "flow": flow_to_color(flow[0].detach().float().permute(1, 2, 0).cpu().numpy()),
    }
    if occ is not None:
        o = (occ[0].detach().float().reshape(occ.shape[-2:]).cpu().numpy() * 255).astype(np.uint8)
        pics["occlusion"] = np.repeat(o[..., None], 3, axis=2)
    if pasted is not None:
        pics["pasted"] = hstack([_rgb(pasted[0][0]), _rgb(pasted[1][0])])
    return {f"train/{k}": v for k, v in pics.items()}
