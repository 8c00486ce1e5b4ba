"""Post-hoc EMA on the 8x8 digits: digits_mlp tracking two power-function EMA profiles.

python -m experiments.train --config=experiments/configs/digits_phema.py --workdir=runs/digits_phema
python -m experiments.posthoc_ema --workdir=runs/digits_phema --sigma_rels=0.01,0.02,0.03,0.05,0.07,0.1,0.13,0.16,0.2,0.25

The train state carries power-function EMA profiles of relative std 0.05 and 0.10 (EDM2's pair);
a snapshot of both is written to workdir/phema/ every 100 steps. experiments.posthoc_ema then
rebuilds the EMA of any length from them and scores each with the digit-classifier Frechet
distance (docs/evaluation.md has the plot). A short run at a high learning rate keeps the
weights moving, so the EMA length matters.
arg: "runlocal" shrinks the run to a few seconds.
"""

from experiments.configs import digits_mlp


def get_config(arg=None):
    c = digits_mlp.get_config(arg)
    c.total_steps = 1500 if arg != "runlocal" else c.total_steps
    c.optimizer.learning_rate = 3e-3
    c.optimizer.schedule = "constant"
    c.posthoc_ema.sigma_rels = (0.05, 0.10)
    c.posthoc_ema.snapshot_every = 100 if arg != "runlocal" else 2
    c.checkpoint_every = 500 if arg != "runlocal" else c.checkpoint_every
    c.sample_every = 0
    return c
