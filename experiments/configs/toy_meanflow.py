"""MeanFlow (Geng et al. 2025) on the 2-D two-moons set: the average velocity u(z, r, t).

python -m experiments.train --config=experiments/configs/toy_meanflow.py --workdir=runs/toy_meanflow
python -m experiments.train --config=experiments/configs/toy_meanflow.py:runlocal --workdir=/tmp/toy_meanflow

A two-time FlowMapMLP trained with jdiff.flowmaps.meanflow_loss (target v - (t - r) du/dt by
jax.jvp, 25% of examples with r != t, logit-normal(-0.4, 1) times). The adaptive weight's
power is 0 here: on 2-D data p = 1 (the paper's image setting) trained markedly worse in
benchmarks/bench_flowmaps.py. Sampled in config.flowmap.num_steps steps.
arg: "runlocal" shrinks the run to a few seconds.
"""

from experiments.configs import common
from experiments.configs.toy_shortcut import flowmap_section


def get_config(arg=None):
    c = common.base_config()
    c.data.name = "moons"
    c.data.kwargs.n = 20_000
    c.data.shape = (2,)
    c.model.name = "flowmap_mlp"
    c.model.kwargs.in_features = 2
    c.model.kwargs.hidden = 128
    c.model.kwargs.depth = 3
    c.path.name = "linear"
    c.loss.name = "flowmaps.meanflow_loss"
    c.loss.kwargs.fraction_r_neq_t = 0.25
    c.loss.kwargs.adaptive_p = 0.0
    c.flowmap = flowmap_section(num_steps=1)
    c.batch_size = 256
    c.total_steps = 4000
    c.optimizer.learning_rate = 2e-3
    c.sample.num_samples = 4096
    c.sample_every = 1000
    if arg == "runlocal":
        common.runlocal(c)
        c.model.kwargs.hidden = 32
        c.sample.num_samples = 256
    return c
