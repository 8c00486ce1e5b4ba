"""DDPM++-style U-Net on CIFAR-10 (tensorflow-datasets), eps prediction on the linear VP path.

python -m experiments.train --config=experiments/configs/cifar10.py --workdir=gs://bucket/cifar10
python -m experiments.train --config=experiments/configs/cifar10.py:runlocal --workdir=/tmp/cifar10

The full run needs tensorflow-datasets and the prepared data (pods: --config.distributed=True).
"runlocal" trains a tiny U-Net for a few steps on synthetic 32x32x3 arrays, no data needed.
"""

from experiments.configs import common


def get_config(arg=None):
    c = common.base_config()
    c.data.name = "cifar10"
    c.data.shape = (32, 32, 3)
    c.model.name = "unet"
    c.model.kwargs.image_size = 32
    c.model.kwargs.channels = 3
    c.model.kwargs.ch = 128
    c.model.kwargs.ch_mult = (1, 2, 2, 2)  # 32 -> 16 -> 8 -> 4 (DDPM++)
    c.model.kwargs.num_res_blocks = 2
    c.model.kwargs.attn_resolutions = (16,)
    c.model.kwargs.dropout = 0.1
    c.model.kwargs.kind = "eps"
    c.path.name = "vp_linear"  # beta in [0.1, 20] (DDPM)
    c.loss.name = "ddpm_loss"
    c.batch_size = 128
    c.total_steps = 800_000  # Song et al. 2021
    c.ema_decay = 0.9999
    c.optimizer.learning_rate = 2e-4
    c.optimizer.warmup_steps = 5000
    c.optimizer.schedule = "constant"
    c.sample.solver = "dpmpp_2m"
    c.sample.grid = "log_snr"
    c.sample.num_steps = 20
    c.sample_every = 10_000
    c.checkpoint_every = 5000
    if arg == "runlocal":
        common.runlocal(c, steps=4)
        c.data.name = "synthetic"
        c.data.kwargs.n = 32
        c.data.kwargs.shape = (32, 32, 3)
        c.model.kwargs.ch = 8
        c.model.kwargs.ch_mult = (1, 2)
        c.model.kwargs.num_res_blocks = 1
        c.model.kwargs.attn_resolutions = ()
        c.batch_size = 8
        c.sample.num_samples = 4
        c.sample.num_steps = 2
    return c
