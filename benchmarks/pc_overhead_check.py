"""Re-time one row of bench_samplers' overhead table: PredictorCorrector(EulerMaruyama()), N = 100.

    python benchmarks/pc_overhead_check.py . new                       # this tree
    git worktree add --detach /tmp/old f4ad08a
    PYTHONPATH=/tmp/old python benchmarks/pc_overhead_check.py /tmp/old old   # the old API

Prints sampler time / (NFE x one model call) for the MLP (batch 4096) and the analytic mixture
(batch 1024), with more repeats than `bench_samplers.py --quick` (50 model calls, 10 samples).
"""

import sys

import jax
import jax.numpy as jnp

root, which = sys.argv[1], sys.argv[2]
sys.path.insert(0, root + "/benchmarks")
import bench_samplers as B  # noqa: E402

import jdiff  # noqa: E402
from jdiff import samplers as S  # noqa: E402

new = which == "new"
path = jdiff.VPLinear()
gm = B.mixture(jnp.float32)
for name, batch in (("mlp", 4096), ("mix", 1024)):
    if name == "mlp":
        model = B.mlp_model(jax.random.PRNGKey(0), path) if new else B.mlp_model(jax.random.PRNGKey(0))
    else:
        model = gm.as_model(path, "eps")
    x = path.prior_sample(jax.random.PRNGKey(1), (batch, 2), jnp.float32)
    t_model = B.timeit(jax.jit(lambda x, t, m=model: m(x, t, None)), x, jnp.float32(0.5), repeats=50)
    solver = S.PredictorCorrector(S.EulerMaruyama(), n_corrector=1, snr=0.16)
    if new:
        run = jax.jit(lambda x, g, k, m=model, sv=solver: S.sample(sv, m, x, g, key=k))
    else:
        run = jax.jit(lambda x, g, k, m=model, sv=solver: S.sample(sv, m, "eps", path, x, g, key=k))
    t = B.timeit(run, x, S.log_snr_grid(path, 100), jax.random.PRNGKey(2), repeats=10)
    print(which, name, round(t / (solver.nfe(100) * t_model), 3), flush=True)
