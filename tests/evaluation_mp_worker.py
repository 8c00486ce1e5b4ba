"""One process of the multi-process evaluation test (tests/test_evaluation_experiments.py):
started by experiments/launch/local.py with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID and forced CPU devices; generates and featurizes its share of the samples and,
on process 0, writes the merged statistics to <out>/merged.npz.

    python tests/evaluation_mp_worker.py OUT_DIR
"""

import os
import sys

import numpy as np
from flax import nnx
from helpers import random_torch_weights

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: experiments

from experiments import _lib, _sample_eval
from experiments._config import load_config_file
from jdiff import metrics, parallel
from jdiff.metrics._weights import materialize

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments", "configs", "digits_phema.py")


def tiny_nets():
    """The test module's feature networks: the same sizes and seeds, loaded without files."""
    inc = materialize(nnx.eval_shape(lambda: metrics.InceptionV3(width=1 / 8, rngs=nnx.Rngs(0))))
    inc.load(random_torch_weights(inc, seed=0))
    kw = {"embed_dim": 32, "depth": 2, "num_heads": 4}
    dino = materialize(nnx.eval_shape(lambda: metrics.DinoV2(None, pos_grid=4, rngs=nnx.Rngs(0), **kw)))
    dino.load(random_torch_weights(dino, seed=1))
    return _sample_eval.FeatureNets(inc, dino, inception_size=75, dinov2_size=28)


def main(out):
    parallel.initialize_distributed()
    import jax

    config = load_config_file(CONFIG + ":runlocal")
    recipe = _lib.recipe_for(config)
    graphdef, params, rest = nnx.split(recipe.build_model(), nnx.Param, ...)
    draw = recipe.make_sampler(graphdef, (16, 8, 8, 1))
    acc = _sample_eval.feature_stats_of_samples(
        draw.draw,
        params,
        rest,
        tiny_nets(),
        num_samples=40,
        batch_size=16,
        mesh=parallel.make_mesh(),
        seed=3,
        progress=False,
        state_dir=os.path.join(out, "state"),
        fingerprint="mp",
    )
    if jax.process_index() == 0:
        np.savez(
            os.path.join(out, "merged.npz"),
            fid_mean=acc.fid.mean,
            fid_m2=acc.fid.m2,
            dino_mean=acc.dino.mean,
            is_sum_p=acc.inception_score.sum_p,
            processes=jax.process_count(),
            devices=len(jax.devices()),
        )
    print("RESULT done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
