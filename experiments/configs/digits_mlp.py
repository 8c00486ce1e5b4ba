"""The `make demo` run: flow matching on the 8x8 digits with a residual MLP on the 64 pixels.

python -m experiments.train --config=experiments/configs/digits_mlp.py --workdir=runs/digits_mlp
python -m experiments.train --config=experiments/configs/digits_mlp.py:runlocal --workdir=/tmp/digits_mlp

An MLP on the flattened pixels trains faster on 2 CPU cores than a U-Net (XLA's CPU
convolutions are slow) and gives recognizable digits in about 3000 steps.
arg: "runlocal" shrinks the run to a few seconds.
"""

from experiments.configs import common


def get_config(arg=None):
    c = common.base_config()
    c.data.name = "digits"  # scikit-learn's 1,797 8x8 digits, embedded in the package
    c.data.shape = (8, 8, 1)
    c.data.holdout = 0.1  # 180 digits never trained on: experiments.evaluate's NLL / sample-metric split
    c.model.name = "mlp"
    c.model.kwargs.in_features = 8 * 8 * 1
    c.model.kwargs.hidden = 256
    c.model.kwargs.depth = 3
    c.model.kwargs.kind = "velocity"
    c.path.name = "linear"
    c.loss.name = "cfm_loss"
    c.batch_size = 256
    c.total_steps = 3000
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 200
    c.sample.solver = "heun"
    c.sample.num_steps = 20  # 39 network evaluations
    c.sample.num_samples = 100
    c.sample_every = 1000
    c.checkpoint_every = 500
    if arg == "runlocal":
        common.runlocal(c)
        c.model.kwargs.hidden = 32
        c.model.kwargs.depth = 1
    return c
