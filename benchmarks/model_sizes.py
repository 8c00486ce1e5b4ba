"""Parameter counts of the jdiff networks at standard configurations, and their
forward-pass cost relative to the digits U-Net (one run, this machine).

    python benchmarks/model_sizes.py [--time]

Parameter counts come from abstract evaluation (nothing is allocated); --time also jits
each forward pass on a batch of 8 and prints its time as a ratio to the digits U-Net.
"""

import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from jdiff import models

CONFIGS = {
    "MLP toy 2-D (hidden 256, depth 3)": (lambda: models.MLP(2, rngs=nnx.Rngs(0)), (2,)),
    "U-Net digits 8x8x1 (ch 64, (1,2), attn 4)": (
        lambda: models.UNet(8, 1, ch=64, ch_mult=(1, 2), attn_resolutions=(4,), num_classes=10, rngs=nnx.Rngs(0)),
        (8, 8, 1),
    ),
    "U-Net MNIST 28x28x1 (ch 64, (1,2,2), attn 7)": (
        lambda: models.UNet(28, 1, ch=64, ch_mult=(1, 2, 2), attn_resolutions=(7,), num_classes=10, rngs=nnx.Rngs(0)),
        (28, 28, 1),
    ),
    "U-Net CIFAR-10 32x32x3 (DDPM++ ch 128, (1,2,2,2))": (
        lambda: models.UNet(32, 3, ch=128, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,), rngs=nnx.Rngs(0)),
        (32, 32, 3),
    ),
    "DiT-S/2 32x32x3 (384, depth 12, 6 heads)": (
        lambda: models.DiT(32, 3, patch_size=2, num_classes=10, rngs=nnx.Rngs(0)),
        (32, 32, 3),
    ),
}


def main(timed: bool):
    rows, base = [], None
    for name, (build, shape) in CONFIGS.items():
        model = nnx.eval_shape(build)
        count = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
        ms = None
        if timed:
            model = nnx.jit(build)()
            f = nnx.jit(lambda m, x, t: m(x, t))
            x, t = jnp.ones((8, *shape), jnp.float32), jnp.full((8,), 0.5, jnp.float32)
            f(model, x, t).block_until_ready()
            t0 = time.perf_counter()
            for _ in range(5):
                f(model, x, t).block_until_ready()
            ms = (time.perf_counter() - t0) / 5 * 1e3
            if "digits" in name:
                base = ms
        rows.append((name, count, ms))
    print(f"| model | parameters |{' forward time / digits U-Net |' if timed else ''}")
    print(f"|---|---:|{'---:|' if timed else ''}")
    for name, count, ms in rows:
        print(f"| {name} | {count:,} |" + (f" {ms / base:.2f} |" if timed else ""))


if __name__ == "__main__":
    main("--time" in sys.argv)
