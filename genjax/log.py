"""Run outputs: metrics to JSON lines and TensorBoard, image grids as PNG, a progress bar.

Only process 0 writes; other hosts get no-op writers, so experiment code never checks the process index.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np


def _scalar(v) -> float:
    return float(np.asarray(v))


class MetricWriter:
    """Appends `{"step": s, "split": ..., name: value}` lines to metrics.jsonl and TensorBoard events."""

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            try:
                from tensorboardX import SummaryWriter  # light: no TensorFlow
            except ImportError:  # e.g. a bare accelerator image: JSON lines still record everything
                print("genjax: tensorboardX is not installed; metrics go to metrics.jsonl only", file=sys.stderr)
            else:
                self._tb = SummaryWriter(os.path.join(workdir, "tb"), flush_secs=30)

    def scalars(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
        if not self.enabled or not metrics:
            return
        values = {k: _scalar(v) for k, v in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
        for k, v in values.items():
            if self._tb is not None:
                self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str, split: str | None = None) -> list[dict]:
    """The metrics.jsonl rows of a run (optionally one split)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if split is None or r.get("split") == split]


# ----------------------------------------------------------------------------- images


def image_grid(images: np.ndarray, ncol: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """(N, H, W, C) floats in [0, 1] -> one uint8 (rows, cols, 3) grid, nearest-upscaled by `scale`."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n, h, w, c = images.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
    for i, img in enumerate(images):
        r, col = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    return (grid * 255).round().astype(np.uint8)


def save_grid(path: str, images: np.ndarray, ncol: int | None = None, scale: int | None = None) -> np.ndarray:
    """Saves images as a PNG grid (small images are upscaled so an 8x8 digit is visible)."""
    from PIL import Image

    h = np.asarray(images).shape[1]
    scale = scale or max(1, 64 // h)
    grid = image_grid(images, ncol=ncol, scale=scale)
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        Image.fromarray(grid).save(path)
    return grid


# ----------------------------------------------------------------------------- progress


class Progress:
    """A tqdm bar with ETA, examples/s and the latest metrics; quiet off process 0 or when disabled."""

    def __init__(self, total: int, initial: int, examples_per_step: int, enabled: bool = True):
        from tqdm.auto import tqdm

        self.examples_per_step = examples_per_step
        self._last = (initial, time.perf_counter())
        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
                        disable=not enabled or jax.process_index() != 0, mininterval=1.0)

    def update(self, step: int, metrics: Mapping[str, float] | None = None) -> float:
        """Moves the bar to `step`; returns examples/s since the previous call."""
        prev_step, prev_time = self._last
        now = time.perf_counter()
        rate = (step - prev_step) * self.examples_per_step / max(now - prev_time, 1e-9)
        self._last = (step, now)
        self.bar.update(step - self.bar.n)
        if metrics is not None:
            shown = {k: f"{v:.4g}" for k, v in list(metrics.items())[:4]}
            self.bar.set_postfix(**shown, ex_s=f"{rate:.0f}", refresh=False)
        return rate

    def write(self, msg: str) -> None:
        """A message that must reach the user (warnings), above the bar when it is shown."""
        if not self.bar.disable:
            self.bar.write(msg, file=sys.stderr)
        elif jax.process_index() == 0:
            print(msg, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def note(msg: str) -> None:
    """A one-line progress note on stderr (process 0 only), e.g. before a long silent phase."""
    if jax.process_index() == 0:
        print(f"genjax: {msg}", file=sys.stderr, flush=True)
