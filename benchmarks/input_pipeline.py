"""Input pipeline throughput: 32x32 RGB images from PNG files and from in-memory uint8 arrays.

    python benchmarks/input_pipeline.py [--images 20000] [--out benchmarks/results/input_pipeline.md]

Measures, on this machine: (1) the one-time check of a PNG folder at load (every PNG decoded once);
(2) batches/s of `genjax.data.batches` (gather, decode, random flip, uint8 -> float32; batch 128) with
0 (in-process), 1 and 2 grain worker processes, after a warm-up; (3) a stand-in CPU training step
(a jitted MLP whose step costs about what the digits U-Net's does) fed synthetic batches vs batches from
the loader, to see whether the loader slows the step. Results go to a markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def natural_images(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour fields (compress like photos, unlike white noise): uint8 (n, 32, 32, 3)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 4, 4, 3)).astype(np.float32)
    fine = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    return np.clip(fine + rng.normal(0, 12, fine.shape), 0, 255).astype(np.uint8)


def write_folder(root: str, images: np.ndarray, num_classes: int = 10) -> None:
    from PIL import Image

    for i, image in enumerate(images):
        folder = os.path.join(root, f"class_{i % num_classes}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image).save(os.path.join(folder, f"{i:06d}.png"))


def loader_rate(source, workers: int, batch_size: int, seconds: float) -> float:
    from genjax import data

    stream = data.batches(source.fetch, source.size, batch_size, seed=0, workers=workers, flip=True)
    for _ in range(3 if workers == 0 else 2 * workers + 2):  # warm-up (and worker start-up)
        next(stream)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(stream)
        n += 1
    rate = n * batch_size / (time.perf_counter() - start)
    if hasattr(stream, "close"):
        stream.close()
    return rate


def stand_in_step(batch_size: int):
    """A jitted MLP training step on (B, 32, 32, 3) images, sized to ~30 ms on 2 cores."""
    import jax
    import jax.numpy as jnp

    sizes = (3072, 1024, 1024, 3072)
    keys = jax.random.split(jax.random.key(0), len(sizes) - 1)
    params = [jax.random.normal(k, (a, b)) * a ** -0.5 for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

    def loss(params, x):
        h = x.reshape(x.shape[0], -1)
        for w in params[:-1]:
            h = jax.nn.gelu(h @ w)
        return jnp.mean((h @ params[-1] - x.reshape(x.shape[0], -1)) ** 2)

    @jax.jit
    def step(params, x):
        g = jax.grad(loss)(params, x)
        return [p - 1e-3 * d for p, d in zip(params, g)]

    return step, params


def step_rate(step, params, batches, steps: int) -> float:
    import jax

    params = step(params, next(batches))  # compile
    jax.block_until_ready(params)
    start = time.perf_counter()
    for _ in range(steps):
        params = step(params, next(batches))
    jax.block_until_ready(params)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "input_pipeline.md"))
    args = parser.parse_args()

    from genjax import data

    rows = []
    images = natural_images(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "pngs")
        write_folder(folder, images)
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)
        start = time.perf_counter()
        png = data.load(folder, "all")
        check = time.perf_counter() - start
        rows.append(("PNG folder: load (every file decoded once to check it)", 0, args.images / check))
        arrays = data.from_arrays(images, np.arange(len(images)) % 10)
        for name, source in (("PNG folder", png), ("in-memory uint8 arrays", arrays)):
            for workers in (0, 1, 2):
                rows.append((f"{name}: batches of {args.batch_size}, flip, to float32", workers,
                             loader_rate(source, workers, args.batch_size, args.seconds)))
                print(rows[-1], flush=True)

        step, params = stand_in_step(args.batch_size)
        fixed = arrays.fetch(np.arange(args.batch_size))

        def synthetic():
            while True:
                yield fixed["image"]

        def from_loader(source, workers):
            stream = data.batches(source.fetch, source.size, args.batch_size, seed=0, workers=workers, flip=True)
            return (b["image"] for b in stream)

        steps = 60
        step_rows = [("synthetic batch (no loader)", 0, step_rate(step, params, synthetic(), steps))]
        for name, source in (("PNG folder", png), ("in-memory uint8 arrays", arrays)):
            for workers in (0, 2):
                step_rows.append((name, workers, step_rate(step, params, from_loader(source, workers), steps)))
                print(step_rows[-1], flush=True)

    cpu = os.cpu_count()
    lines = [
        "# Input pipeline throughput",
        "",
        f"`python benchmarks/input_pipeline.py --images {args.images}` on {cpu} CPU cores "
        f"({time.strftime('%Y-%m-%d')}); {args.images:,} 32x32 RGB images ({size / args.images:,.0f} bytes per PNG).",
        "",
        "| input | workers | images/s |",
        "| --- | --- | --- |",
        *[f"| {name} | {w} | {rate:,.0f} |" for name, w, rate in rows],
        "",
        f"Stand-in CPU training step (jitted MLP 3072-1024-1024-3072, batch {args.batch_size}), fed by:",
        "",
        "| batches from | workers | steps/s | images/s |",
        "| --- | --- | --- | --- |",
        *[f"| {name} | {w} | {rate:.2f} | {rate * args.batch_size:,.0f} |" for name, w, rate in step_rows],
        "",
    ]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
