"""Flow matching on the 2-D two-moons set with a residual MLP (rectified-flow path, velocity).

python -m experiments.train --config=experiments/configs/toy2d_fm.py --workdir=runs/toy2d_fm
python -m experiments.train --config=experiments/configs/toy2d_fm.py:runlocal --workdir=/tmp/toy2d_fm

arg: "runlocal" shrinks the run to a few seconds. Any toy set works: --config.data.name=checkerboard.
"""

from experiments.configs import common


def get_config(arg=None):
    c = common.base_config()
    c.data.name = "moons"  # experiments._names.TOY_SETS
    c.data.kwargs.n = 20_000
    c.data.shape = (2,)
    c.model.name = "mlp"
    c.model.kwargs.in_features = 2
    c.model.kwargs.hidden = 128
    c.model.kwargs.depth = 3
    c.model.kwargs.kind = "velocity"
    c.path.name = "linear"  # alpha = 1 - t, sigma = t
    c.loss.name = "cfm_loss"
    c.batch_size = 256
    c.total_steps = 3000
    c.optimizer.learning_rate = 2e-3
    c.sample.solver = "heun"
    c.sample.num_steps = 20
    c.sample.num_samples = 4096
    c.sample_every = 1000
    if arg == "runlocal":
        common.runlocal(c)
        c.model.kwargs.hidden = 32
        c.sample.num_samples = 256
    return c
