"""Input pipeline throughput: 32x32 RGB images from PNG files and from in-memory uint8 arrays.

    python -m benchmarks.input_pipeline [--images 20000] [--out benchmarks/results]

Measures (1) the one-time check of a PNG folder at load (every PNG decoded once); (2) images/s of
`genjax.data.batches` (gather, decode, random flip, uint8 -> float32) with 0 (in-process), 1 and 2
grain worker processes, after a warm-up; (3) a stand-in CPU training step (a jitted MLP costing about
what the digits U-Net's step does) fed a fixed batch vs batches from the loader: does the loader slow it?
Writes input_pipeline.md.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from benchmarks import report, timing
from genjax import data

BATCH, SECONDS = 128, 6.0


def natural_images(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour fields (compress like photos, unlike white noise): uint8 (n, 32, 32, 3)."""
    rng = np.random.default_rng(seed)
    fine = np.repeat(np.repeat(rng.integers(0, 256, (n, 4, 4, 3)).astype(np.float32), 8, axis=1), 8, axis=2)
    return np.clip(fine + rng.normal(0, 12, fine.shape), 0, 255).astype(np.uint8)


def loader(source, workers: int):
    """The loader's batches, warmed up (workers started); closing it stops the workers."""
    stream = data.batches(source.fetch, source.size, BATCH, seed=0, workers=workers, flip=True)
    for _ in range(3 if workers == 0 else 2 * workers + 2):
        next(stream)
    return stream


def loader_rate(source, workers: int) -> float:
    """Images/s drawn from the loader for about SECONDS."""
    stream, n, start = loader(source, workers), 0, time.perf_counter()
    while time.perf_counter() - start < SECONDS:
        next(stream)
        n += 1
    rate = n * BATCH / (time.perf_counter() - start)
    stream.close()
    return rate


def step_rate(batches, steps: int = 60) -> float:
    """Steps/s of a jitted MLP training step on (B, 32, 32, 3) images (~30 ms on 2 cores) fed `batches`'
    images."""
    sizes = (3072, 1024, 1024, 3072)
    shapes = list(zip(sizes, sizes[1:]))
    params = [jax.random.normal(jax.random.key(i), (a, b)) * a**-0.5 for i, (a, b) in enumerate(shapes)]

    def loss(params, x):
        h = x = x.reshape(x.shape[0], -1)
        for w in params[:-1]:
            h = jax.nn.gelu(h @ w)
        return jnp.mean((h @ params[-1] - x) ** 2)

    step = jax.jit(lambda params, x: [p - 1e-3 * g for p, g in zip(params, jax.grad(loss)(params, x))])
    params = jax.block_until_ready(step(params, next(batches)["image"]))  # compile

    def run():
        p = params
        for _ in range(steps):
            p = step(p, next(batches)["image"])
        jax.block_until_ready(p)

    return steps / timing.once(run)[1]


def main(argv=None) -> None:
    p = report.parser("benchmarks.input_pipeline", __doc__)
    p.add_argument("--images", type=int, default=20000)
    args = p.parse_args(argv)
    n, images = args.images, natural_images(args.images)
    with tempfile.TemporaryDirectory() as folder:
        for i, image in enumerate(images):
            os.makedirs(sub := os.path.join(folder, f"class_{i % 10}"), exist_ok=True)
            Image.fromarray(image).save(os.path.join(sub, f"{i:06d}.png"))
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)
        png, check_s = timing.once(lambda: data.load(folder, "all"))
        arrays = data.from_arrays(images, np.arange(len(images)) % 10)
        sources = {"PNG folder": png, "in-memory uint8 arrays": arrays}
        rows = [{"input": "PNG folder: load (every file decoded once to check it)", "workers": 0,
                 "rate": n / check_s}]
        rows += [{"input": f"{name}: batches of {BATCH}, flip, to float32", "workers": workers,
                  "rate": loader_rate(source, workers)}
                 for (name, source), workers in itertools.product(sources.items(), (0, 1, 2))]
        fixed = itertools.repeat(arrays.fetch(np.arange(BATCH)))
        steps = [{"input": "synthetic batch (no loader)", "workers": 0, "rate": step_rate(fixed)}]
        steps += [{"input": name, "workers": workers, "rate": step_rate(loader(source, workers))}
                  for (name, source), workers in itertools.product(sources.items(), (0, 2))]
    lines = ["# Input pipeline throughput", "",
             f"`python -m benchmarks.input_pipeline --images {n}` on {os.cpu_count()} CPU cores "
             f"({time.strftime('%Y-%m-%d')}); {n:,} 32x32 RGB images ({size / n:,.0f} bytes per PNG).", "",
             *report.table(rows, {"input": "{input}", "workers": "{workers}", "images/s": "{rate:,.0f}"}), "",
             f"Stand-in CPU training step (jitted MLP 3072-1024-1024-3072, batch {BATCH}), fed by:", "",
             *report.table(steps, {"batches from": "{input}", "workers": "{workers}", "steps/s": "{rate:.2f}",
                                   "images/s": lambda r: f"{r['rate'] * BATCH:,.0f}"}), ""]
    report.write(args.out, "input_pipeline", None, "\n".join(lines))


if __name__ == "__main__":
    main()
