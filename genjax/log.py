"""Run outputs: metrics to JSON lines and TensorBoard, image grids as PNG, progress and notes on stderr.

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


def save_labelled_rows(path: str, images: np.ndarray, labels: list[str]) -> np.ndarray:
    """A `save_grid` PNG of len(labels) rows of images (row-major, equally many per row) with each row's
    label written to its left (e.g. the prompt the row was drawn for); returns the RGB array."""
    from PIL import Image, ImageDraw, ImageFont

    images = np.asarray(images)
    h = images.shape[1]
    scale = max(1, 64 // h)
    grid = Image.fromarray(image_grid(images, ncol=len(images) // len(labels), scale=scale))
    row = (h + 1) * scale
    font = ImageFont.load_default(size=max(10, row // 4))
    measure = ImageDraw.Draw(grid)
    left = int(max(measure.textlength(label, font=font) for label in labels)) + 2 * scale
    canvas = Image.new("RGB", (left + grid.width, grid.height), "white")
    canvas.paste(grid, (left, 0))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(labels):
        draw.text((scale, scale + i * row + (row - scale) // 2), label, fill="black", font=font, anchor="lm")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        canvas.save(path)
    return np.asarray(canvas)


# ----------------------------------------------------------------------------- progress


def note(msg: str) -> None:
    """A one-line note on stderr (process 0) before a long silent phase: "compiling the train step...",
    "evaluating...". Printed above a live progress bar without breaking it."""
    if jax.process_index() != 0:
        return
    from tqdm.auto import tqdm

    tqdm.write("genjax: " + msg, file=sys.stderr)
    sys.stderr.flush()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class Progress:
    """Training progress on stderr, process 0 only.

    On a terminal, a tqdm bar with ETA, examples/s and the latest metrics. Otherwise (a log file, a
    pipe, a cluster job) a bar's carriage returns would make one endless line, so each metrics update
    (every `log_every` steps) prints one plain line: step, metrics, examples/s, ETA.
    """

    def __init__(self, total: int, initial: int, examples_per_step: int, enabled: bool = True,
                 live: bool | None = None):
        self.total = total
        self.examples_per_step = examples_per_step
        self.enabled = enabled and jax.process_index() == 0
        self.live = sys.stderr.isatty() if live is None else live
        self._last = (initial, time.perf_counter())
        self.bar = None
        if self.enabled and self.live:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
                            mininterval=1.0)

    def restart_clock(self, step: int) -> None:
        """Measures speed from `step` on (after compilation, which would drag the first rate down)."""
        self._last = (step, time.perf_counter())

    def update(self, step: int, metrics: Mapping[str, float] | None = None) -> float:
        """Moves the progress to `step`; returns examples/s since the previous call."""
        prev_step, prev_time = self._last
        now = time.perf_counter()
        steps_per_sec = (step - prev_step) / max(now - prev_time, 1e-9)
        rate = steps_per_sec * self.examples_per_step
        self._last = (step, now)
        # The loss first; the all-zero `nonfinite` flag is for metrics.jsonl, not for the eye.
        names = sorted((k for k in metrics or {} if k != "nonfinite"), key=lambda k: k != "loss")
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if metrics is not None:
                shown = {k: f"{metrics[k]:.4g}" for k in names[:4]}
                self.bar.set_postfix(**shown, ex_s=f"{rate:.0f}", refresh=False)
        elif self.enabled and metrics is not None:
            shown = " ".join(f"{k}={metrics[k]:.4g}" for k in names[:6])
            eta = _duration((self.total - step) / steps_per_sec) if steps_per_sec > 0 else "?"
            print(f"genjax: step {step}/{self.total} {shown} | {rate:,.0f} examples/s | ETA {eta}",
                  file=sys.stderr, flush=True)
        return rate

    def phase(self, what: str, step: int) -> None:
        """Says what a long pause at `step` is (an evaluation hook, sampling); '' when it is over."""
        if self.bar is not None:
            self.bar.set_description_str(what, refresh=True)
        elif self.enabled and what:
            print(f"genjax: step {step}: {what}", file=sys.stderr, flush=True)

    def write(self, msg: str) -> None:
        """A message that must reach the user (warnings), above the bar when it is shown."""
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        elif jax.process_index() == 0:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
