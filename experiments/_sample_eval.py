"""Research-standard sample metrics: FID, Inception Score and FD-DINOv2 over N generated samples,
generated and featurized sharded across every device and process, with float64 streaming
statistics, a progress line, and resume from the last finished shard.

    python -m experiments.evaluate --workdir=runs/cifar10 --metric=fid --num_samples=50000 \\
        --ref=fid_stats_cifar10_train.npz --inception=pt_inception-2015-12-05.npz \\
        --dinov2=dinov2_vitl14.npz --ref_dinov2=dinov2_stats_cifar10_train.npz --solver=heun --num_steps=18

Shard k is one global batch of `batch_size` samples drawn with the key fold_in(PRNGKey(seed), k):
the prior noise of the whole batch is one array sharded over the mesh's batch axes, so each
device generates and featurizes its own rows, and the samples do not depend on how many devices
or processes share the work. Samples are quantized like an 8-bit PNG, pixels =
clip(floor(127.5 x + 128), 0, 255) (EDM's and StyleGAN's image writers), before the feature
networks' preprocessing (jdiff.metrics.inception_preprocess / dinov2_preprocess). Grey images
are repeated to three channels.

Each process accumulates the rows it owns (jdiff.metrics.FeatureStats, InceptionScoreStats);
after every shard it writes its accumulators to <out dir>/fid_<fingerprint>/state_p<process>.npz
(atomically), so a killed evaluation rerun with the same arguments continues after the last
finished shard. At the end the processes' statistics are gathered and merged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import _data, _names
from experiments._config import ConfigError
from experiments._recipes import DiffusionRecipe
from experiments._workdir import restore
from jdiff import metrics, parallel

__all__ = [
    "FeatureNets",
    "evaluate_fid",
    "feature_stats_of_samples",
    "format_table",
    "load_feature_nets",
    "run_cli",
    "to_pixels",
    "write_reference_stats",
]

METRICS = ("fid", "is", "fd_dinov2")


class FeatureNets(NamedTuple):
    """The feature networks and how their inputs are prepared.

    inception: a jdiff.metrics.InceptionV3 (FID pool3 features, IS logits) or None.
    dinov2: a jdiff.metrics.DinoV2 (FD-DINOv2 features) or None.
    mode: Inception preprocessing ("pytorch_fid", "clean", "tf1"; jdiff.metrics.INCEPTION_MODES).
    inception_size, dinov2_size: input resolutions (299 and 224 for the reference numbers).
    """

    inception: Any = None
    dinov2: Any = None
    mode: str = "pytorch_fid"
    inception_size: int = 299
    dinov2_size: int = 224


def load_feature_nets(
    inception: str | None = None, dinov2: str | None = None, *, dinov2_arch: str = "vitl14", mode: str = "pytorch_fid"
) -> FeatureNets:
    """FeatureNets from local weight files (.npz / .safetensors; see docs/evaluation.md)."""
    if mode not in metrics.INCEPTION_MODES:
        raise ConfigError(f"--preprocessing: unknown mode {mode!r}; accepted: {', '.join(metrics.INCEPTION_MODES)}")
    if dinov2_arch not in metrics.DINOV2_ARCHS:
        raise ConfigError(
            f"--dinov2_arch: unknown architecture {dinov2_arch!r}; accepted: {', '.join(metrics.DINOV2_ARCHS)}"
        )
    return FeatureNets(
        metrics.InceptionV3.from_file(inception) if inception else None,
        metrics.DinoV2.from_file(dinov2, dinov2_arch) if dinov2 else None,
        mode,
    )


def to_pixels(x):
    """Samples in [-1, 1] -> the 8-bit pixel values a PNG of them holds, as float32 in [0, 255]."""
    return jnp.clip(jnp.floor(x.astype(jnp.float32) * 127.5 + 128.0), 0.0, 255.0)


def _check_images(shape):
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise ConfigError(f"config.data.shape: {tuple(shape)}; FID / IS / FD-DINOv2 need images (H, W, 1 or 3)")


class _Featurizer:
    """One jitted program: samples (B, H, W, C) in [-1, 1], sharded over the batch -> features."""

    def __init__(self, nets: FeatureNets, mesh):
        self.nets = nets
        parts = {
            name: nnx.split(net)
            for name, net in (("inception", nets.inception), ("dinov2", nets.dinov2))
            if net is not None
        }
        self.graphdefs = {k: g for k, (g, _) in parts.items()}
        self.states = parallel.replicate({k: s for k, (_, s) in parts.items()}, mesh)
        dsh = parallel.data_sharded(mesh)
        self._fn = jax.jit(self._features, in_shardings=(parallel.replicated(mesh), dsh), out_shardings=dsh)

    def _features(self, states, x):
        pixels = to_pixels(x)
        out = {}
        if "inception" in states:
            net = nnx.merge(self.graphdefs["inception"], states["inception"])
            pool, _ = net(metrics.inception_preprocess(pixels, mode=self.nets.mode, size=self.nets.inception_size))
            out["pool"], out["logits"] = pool, net.logits_unbiased(pool)
        if "dinov2" in states:
            net = nnx.merge(self.graphdefs["dinov2"], states["dinov2"])
            out["dino"] = net(metrics.dinov2_preprocess(pixels, size=self.nets.dinov2_size))
        return out

    def __call__(self, x):
        return self._fn(self.states, x)


def _local_rows(arr) -> tuple[np.ndarray, np.ndarray]:
    """(rows this process holds, their global row indices) of an array sharded along axis 0."""
    blocks = {}
    for shard in arr.addressable_shards:
        start = shard.index[0].start or 0
        if start not in blocks:  # a row block replicated over other mesh axes is taken once
            blocks[start] = np.asarray(shard.data)
    starts = sorted(blocks)
    return (
        np.concatenate([blocks[s] for s in starts]),
        np.concatenate([np.arange(s, s + blocks[s].shape[0]) for s in starts]),
    )


class _Accumulators(NamedTuple):
    fid: Any
    inception_score: Any
    dino: Any

    @classmethod
    def empty(cls, nets: FeatureNets, num_samples: int):
        return cls(
            metrics.FeatureStats.empty(nets.inception.num_features) if nets.inception else None,
            metrics.InceptionScoreStats.empty(num_samples, nets.inception.fc.out_features, splits=min(10, num_samples))
            if nets.inception
            else None,
            metrics.FeatureStats.empty(nets.dinov2.num_features) if nets.dinov2 else None,
        )

    def update(self, feats: dict, idx: np.ndarray, keep: np.ndarray):
        return _Accumulators(
            self.fid.update(feats["pool"][keep]) if self.fid is not None else None,
            self.inception_score.update(feats["logits"][keep], idx[keep]) if self.inception_score is not None else None,
            self.dino.update(feats["dino"][keep]) if self.dino is not None else None,
        )

    def to_arrays(self) -> dict:
        out = {}
        for name, acc in self._asdict().items():
            if acc is not None:
                out.update(acc.to_arrays(f"{name}/"))
        return out

    @classmethod
    def from_arrays(cls, arrays, like):
        return cls(
            *(
                type(acc).from_arrays(arrays, f"{name}/") if acc is not None else None
                for name, acc in like._asdict().items()
            )
        )

    def merge(self, other):
        return _Accumulators(*(a.merge(b) if a is not None else None for a, b in zip(self, other, strict=True)))


def _gather(acc: _Accumulators) -> _Accumulators:
    """Merge every process's accumulators (a collective; the identity with one process)."""
    if jax.process_count() == 1:
        return acc
    from jax.experimental import multihost_utils

    arrays = acc.to_arrays()
    everyone = multihost_utils.process_allgather({k: np.asarray(v) for k, v in arrays.items()})
    merged = None
    for p in range(jax.process_count()):
        part = _Accumulators.from_arrays({k: v[p] for k, v in everyone.items()}, acc)
        merged = part if merged is None else merged.merge(part)
    return merged


def _save_state(path: str, next_shard: int, acc: _Accumulators, fingerprint: str) -> None:
    tmp = path + f".tmp{os.getpid()}.npz"
    np.savez(tmp, next_shard=np.int64(next_shard), fingerprint=np.asarray(fingerprint), **acc.to_arrays())
    os.replace(tmp, path)


def _load_state(path: str, fingerprint: str, like: _Accumulators):
    """(next shard, accumulators) of a matching earlier run, or (0, like)."""
    if not os.path.exists(path):
        return 0, like
    with np.load(path) as z:
        if str(z["fingerprint"]) != fingerprint:
            return 0, like
        return int(z["next_shard"]), _Accumulators.from_arrays(z, like)


def feature_stats_of_samples(
    draw,
    params,
    rest,
    nets: FeatureNets,
    *,
    num_samples: int,
    batch_size: int,
    mesh,
    seed: int = 0,
    state_dir: str | None = None,
    fingerprint: str = "",
    progress: bool = True,
) -> _Accumulators:
    """Generate `num_samples` samples in shards of `batch_size` and accumulate their features.

    draw: a jitted sampler draw(params, rest, key) -> (batch_size, H, W, C) in [-1, 1] (a
        Recipe.make_sampler of that batch shape).
    params, rest: the network weights (replicated onto `mesh` here).
    mesh: a jdiff.parallel mesh; batch_size must divide over its batch axes.
    state_dir: where each process keeps its resume state (None: no resume).
    Returns the merged accumulators (fid / inception_score / dino; None for a missing network).
    """
    shards = parallel.batch_shards(mesh)
    if batch_size % shards:
        raise ConfigError(
            f"--sample_batch_size: {batch_size} must be a multiple of the {shards} batch shards of the "
            "mesh (devices on the data and fsdp axes)"
        )
    num_shards = math.ceil(num_samples / batch_size)
    dsh = parallel.data_sharded(mesh)
    params, rest = parallel.replicate(params, mesh), parallel.replicate(rest, mesh)
    generate = jax.jit(draw, out_shardings=dsh)
    featurize = _Featurizer(nets, mesh)
    acc = _Accumulators.empty(nets, num_samples)
    path = None
    start = 0
    if state_dir is not None:
        os.makedirs(state_dir, exist_ok=True)
        path = os.path.join(state_dir, f"state_p{jax.process_index()}.npz")
        start, acc = _load_state(path, fingerprint, acc)
    key = jax.random.PRNGKey(seed)
    show = progress and jax.process_index() == 0
    t0 = time.perf_counter()
    for k in range(start, num_shards):
        feats = featurize(generate(params, rest, jax.random.fold_in(key, k)))
        local = {name: _local_rows(v) for name, v in feats.items()}
        idx = next(iter(local.values()))[1] + k * batch_size
        acc = acc.update({name: rows for name, (rows, _) in local.items()}, idx, idx < num_samples)
        if path is not None:
            _save_state(path, k + 1, acc, fingerprint)
        if show:
            done = min((k + 1) * batch_size, num_samples)
            rate = (k + 1 - start) * batch_size / max(time.perf_counter() - t0, 1e-9)
            eta = (num_samples - done) / max(rate, 1e-9)
            sys.stderr.write(
                f"\rshard {k + 1}/{num_shards}  {done}/{num_samples} samples  {rate:.1f} samples/s  eta {eta:.0f} s "
            )
            sys.stderr.flush()
    if show:
        sys.stderr.write("\n")
    return _gather(acc)


def _nfe(recipe, config, solver, num_steps, weight) -> dict:
    """Model evaluations per sample of the sampler, and the network calls (x2 under CFG)."""
    if isinstance(recipe, DiffusionRecipe):
        s = config.sample
        name = solver or s.solver
        kwargs = dict(s.solver_kwargs) if solver is None else {}
        steps = int(num_steps or s.num_steps)
        nfe = _names.get_solver(name, **kwargs).nfe(steps)
    else:
        name, steps = "flowmap", int(num_steps or config.flowmap.num_steps)
        nfe = steps
    guided = weight is not None or config.get("guidance", None) is not None
    return {"solver": name, "num_steps": steps, "nfe": int(nfe), "network_evals": int(nfe) * (2 if guided else 1)}


def _fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _file_id(path):
    return None if not path else [os.path.abspath(path), os.path.getsize(path), int(os.path.getmtime(path))]


def evaluate_fid(
    workdir: str,
    *,
    num_samples: int = 50_000,
    ref: str | None = None,
    ref_dinov2: str | None = None,
    inception: str | None = None,
    dinov2: str | None = None,
    dinov2_arch: str = "vitl14",
    preprocessing: str = "pytorch_fid",
    batch_size: int = 250,
    solver: str | None = None,
    num_steps: int | None = None,
    grid: str | None = None,
    seed: int = 0,
    out: str | None = None,
    save_stats: str | None = None,
    num_devices: int | None = None,
    params=None,
    nets: FeatureNets = None,
    progress: bool = True,
) -> dict:
    """FID / IS / FD-DINOv2 of `workdir`'s EMA weights (or `params`) over `num_samples` samples.

    ref, ref_dinov2: reference statistics .npz (mu, sigma) for FID / FD-DINOv2 (None: not computed).
    inception, dinov2: local weight files (see docs/evaluation.md); `nets` overrides them.
    preprocessing: the Inception preprocessing mode (jdiff.metrics.INCEPTION_MODES).
    solver, num_steps, grid: the sampler (defaults: the config's).
    save_stats: write the generated samples' Inception statistics here (and DINOv2's to
        <name>_dinov2.npz): reference files for later comparisons.
    params: (params, rest) to evaluate instead of the workdir's EMA weights (post-hoc EMA sweeps).
    Writes <workdir>/eval/fid_step_<step>.json (or `out`), returns the results dict.
    """
    if num_samples < 2:
        raise ConfigError(f"--num_samples: {num_samples}; accepted: an int >= 2 (a covariance needs 2 samples)")
    if batch_size < 1:
        raise ConfigError(f"--sample_batch_size: {batch_size}; accepted: an int >= 1")
    for flag, path in (("--ref", ref), ("--ref_dinov2", ref_dinov2), ("--inception", inception), ("--dinov2", dinov2)):
        if path and not os.path.exists(path):
            raise ConfigError(f"{flag}: {path!r} does not exist; accepted: a local file (docs/evaluation.md)")
    nets = nets or load_feature_nets(inception, dinov2, dinov2_arch=dinov2_arch, mode=preprocessing)
    if nets.inception is None and nets.dinov2 is None:
        raise ConfigError("--inception / --dinov2: give at least one feature network's weight file")
    if ref and nets.inception is None:
        raise ConfigError("--ref: FID needs the Inception weights (--inception)")
    if ref_dinov2 and nets.dinov2 is None:
        raise ConfigError("--ref_dinov2: FD-DINOv2 needs the DINOv2 weights (--dinov2)")
    refs = {
        "fid": metrics.load_stats(ref) if ref else None,
        "dino": metrics.load_stats(ref_dinov2) if ref_dinov2 else None,
    }
    config, recipe, ema = restore(workdir)
    _check_images(config.data.shape)
    weights = (ema.params, ema.rest) if params is None else params
    sampler = recipe.make_sampler(
        ema.graphdef, (batch_size, *config.data.shape), solver=solver, num_steps=num_steps, grid=grid
    )
    mesh = parallel.make_mesh(num_devices)
    sampling = _nfe(recipe, config, solver, num_steps, None)
    settings = {
        "workdir": os.path.abspath(workdir),
        "step": ema.step,
        "num_samples": num_samples,
        "batch_size": batch_size,
        "seed": seed,
        "sampler": sampler.name,
        "grid": grid,
        **sampling,
        "preprocessing": nets.mode,
        "inception": _file_id(inception),
        "dinov2": _file_id(dinov2),
        "dinov2_arch": dinov2_arch,
        "processes": jax.process_count(),
        "custom_params": params is not None,
    }
    fp = _fingerprint(settings)
    out = out or os.path.join(os.path.abspath(workdir), "eval", f"fid_step_{ema.step:07d}.json")
    t0 = time.perf_counter()
    acc = feature_stats_of_samples(
        sampler.draw,
        *weights,
        nets,
        num_samples=num_samples,
        batch_size=batch_size,
        mesh=mesh,
        seed=seed,
        state_dir=None if params is not None else os.path.join(os.path.dirname(os.path.abspath(out)), f"fid_{fp}"),
        fingerprint=fp,
        progress=progress,
    )
    wall = time.perf_counter() - t0
    res = {
        "workdir": os.path.abspath(workdir),
        "step": ema.step,
        "num_samples": num_samples,
        **sampling,
        "grid": grid or config.sample.grid,
        "seed": seed,
        "preprocessing": nets.mode,
        "devices": int(mesh.devices.size),
        "processes": jax.process_count(),
    }
    if acc.fid is not None:
        mu, sigma = acc.fid.mean_cov()
        res["fid"] = metrics.frechet_distance_from_stats(mu, sigma, *refs["fid"]) if refs["fid"] else None
        res["inception_score"], res["inception_score_std"] = acc.inception_score.mean_std()
        if save_stats:
            metrics.save_stats(save_stats, mu, sigma, num_samples=np.int64(num_samples))
    if acc.dino is not None:
        mu, sigma = acc.dino.mean_cov()
        res["fd_dinov2"] = metrics.frechet_distance_from_stats(mu, sigma, *refs["dino"]) if refs["dino"] else None
        if save_stats:
            metrics.save_stats(
                os.path.splitext(save_stats)[0] + "_dinov2.npz", mu, sigma, num_samples=np.int64(num_samples)
            )
    res.update(
        {
            "ref": ref,
            "ref_dinov2": ref_dinov2,
            "inception_weights": inception,
            "dinov2_weights": dinov2,
            "wall_seconds": wall,
            "samples_per_second": num_samples / wall if wall > 0 else None,
        }
    )
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        tmp = out + f".tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=2)
        os.replace(tmp, out)
    res["json"] = out
    res["_stats"] = acc
    return res


def format_table(res: dict) -> str:
    """The results as a two-column table (the JSON's keys; statistics objects left out)."""
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in res.items() if not k.startswith("_")]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(w)}  {v}" for k, v in rows)


def write_reference_stats(
    workdir: str,
    path: str,
    *,
    inception: str | None = None,
    dinov2: str | None = None,
    dinov2_arch: str = "vitl14",
    preprocessing: str = "pytorch_fid",
    batch_size: int = 250,
    num_devices: int | None = None,
    nets: FeatureNets = None,
    progress: bool = True,
) -> dict:
    """Reference statistics of `workdir`'s whole data set (config.data, holdout included) through the
    same quantization, preprocessing and networks as the samples: `path` gets the Inception
    (mu, sigma), <path stem>_dinov2.npz the DINOv2 ones. 8-bit data (x = k / 127.5 - 1) quantize back
    to exactly their pixel values k. Returns {"fid": path, "fd_dinov2": path2, "num_images"}."""
    nets = nets or load_feature_nets(inception, dinov2, dinov2_arch=dinov2_arch, mode=preprocessing)
    if nets.inception is None and nets.dinov2 is None:
        raise ConfigError("--inception / --dinov2: give at least one feature network's weight file")
    config, _, _ = restore(workdir)
    _check_images(config.data.shape)
    images = np.asarray(_data.load_all(config).x, np.float32)
    n = images.shape[0]
    mesh = parallel.make_mesh(num_devices)
    if batch_size % parallel.batch_shards(mesh):
        raise ConfigError(
            f"--sample_batch_size: {batch_size} must be a multiple of the {parallel.batch_shards(mesh)} "
            "batch shards of the mesh"
        )
    featurize = _Featurizer(nets, mesh)
    dsh = parallel.data_sharded(mesh)
    acc = _Accumulators.empty(nets, n)
    for start in range(0, n, batch_size):
        block = images[start : start + batch_size]
        block = np.concatenate([block, np.repeat(block[-1:], batch_size - block.shape[0], 0)])  # pad the last one
        x = jax.make_array_from_callback(block.shape, dsh, lambda index, b=block: b[index])
        local = {name: _local_rows(v) for name, v in featurize(x).items()}
        idx = next(iter(local.values()))[1] + start
        acc = acc.update({name: rows for name, (rows, _) in local.items()}, idx, idx < n)
        if progress and jax.process_index() == 0:
            sys.stderr.write(f"\rreference statistics: {min(start + batch_size, n)}/{n} images ")
            sys.stderr.flush()
    if progress and jax.process_index() == 0:
        sys.stderr.write("\n")
    acc = _gather(acc)
    out = {"num_images": n, "data": config.data.name}
    if jax.process_index() == 0:
        if acc.fid is not None:
            metrics.save_stats(path, *acc.fid.mean_cov(), num_samples=np.int64(n))
            out["fid"] = path
        if acc.dino is not None:
            out["fd_dinov2"] = os.path.splitext(path)[0] + "_dinov2.npz"
            metrics.save_stats(out["fd_dinov2"], *acc.dino.mean_cov(), num_samples=np.int64(n))
    return out


def run_cli(workdir: str, write_ref: str | None = None, **kwargs) -> dict:
    """`experiments.evaluate --metric=fid`: evaluate_fid (or, with `write_ref`, the data set's
    reference statistics), the table on stdout; a bad input is one line on stderr and exit code 2."""
    try:
        if write_ref:
            keep = ("inception", "dinov2", "dinov2_arch", "preprocessing", "batch_size")
            res = write_reference_stats(workdir, write_ref, **{k: v for k, v in kwargs.items() if k in keep})
            print("\n".join(f"{k}: {v}" for k, v in res.items()))
            return res
        res = evaluate_fid(workdir, **kwargs)
    except (ConfigError, FileNotFoundError, ValueError) as e:  # WeightsError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if jax.process_index() == 0:
        print(format_table(res))
    return res
