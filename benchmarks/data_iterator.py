"""Cost of DataIterator's determinism and sharding relative to plain numpy batching.

    python benchmarks/data_iterator.py

For each data set and global batch size, times 200 batches of (a) plain numpy: a fresh
permutation per epoch, then x[perm[i B:(i + 1) B]], (b) DataIterator on 1 process and (c)
on process 0 of 4 (a quarter of each batch); prints (a) in microseconds per batch and the
ratios (b)/(a), (c)/(a), each the best of 5 repeats in one run.
"""

import time

import numpy as np

from jdiff import data

STEPS = 200


def plain(arrays, batch_size, seed=0):
    n = len(arrays["x"])
    steps = n // batch_size
    for i in range(STEPS):
        epoch, step = divmod(i, steps)
        if step == 0:
            perm = np.random.default_rng([seed, epoch]).permutation(n)
        idx = perm[step * batch_size : (step + 1) * batch_size]
        yield {k: v[idx] for k, v in arrays.items()}


def timed(make):
    best = float("inf")
    for _ in range(5):
        it = make()
        t0 = time.perf_counter()
        for _ in range(STEPS):
            next(it)
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    print("| data | global batch | plain numpy (us / batch) | DataIterator / plain | 1 of 4 processes / plain |")
    print("|---|---:|---:|---:|---:|")
    for name, load in (("digits", data.load_digits), ("mnist5k", data.load_mnist5k)):
        arrays = load()._asdict()
        for bs in (128, 512):
            base = timed(lambda a=arrays, b=bs: plain(a, b))
            one = timed(lambda a=arrays, b=bs: data.DataIterator(a, b, seed=0))
            quarter = timed(lambda a=arrays, b=bs: data.DataIterator(a, b, seed=0, process_index=0, process_count=4))
            print(f"| {name} | {bs} | {base / STEPS * 1e6:.1f} | {one / base:.2f} | {quarter / base:.2f} |")


if __name__ == "__main__":
    main()
