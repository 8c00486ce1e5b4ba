"""DDPM on the 8x8 digits: a small U-Net predicting eps on the cosine VP path.

python -m experiments.train --config=experiments/configs/digits_vp.py --workdir=runs/digits_vp
python -m experiments.train --config=experiments/configs/digits_vp.py:runlocal --workdir=/tmp/digits_vp

Sampled with DPM-Solver++(2M) on a log-SNR grid (Lu et al. 2022).
arg: "runlocal" shrinks the run to a few seconds.
"""

from experiments.configs import common


def get_config(arg=None):
    c = common.base_config()
    c.data.name = "digits"
    c.data.shape = (8, 8, 1)
    c.data.holdout = 0.1  # 180 digits never trained on: experiments.evaluate's NLL / sample-metric split
    c.model.name = "unet"
    c.model.kwargs.image_size = 8
    c.model.kwargs.channels = 1
    c.model.kwargs.ch = 64
    c.model.kwargs.ch_mult = (1, 2)  # 8x8 -> 4x4
    c.model.kwargs.num_res_blocks = 2
    c.model.kwargs.attn_resolutions = (4,)
    c.model.kwargs.dropout = 0.1
    c.model.kwargs.kind = "eps"
    c.path.name = "vp_cosine"
    c.loss.name = "ddpm_loss"  # mean_d ||eps - eps_hat||^2 (Ho et al. 2020)
    c.batch_size = 128
    c.total_steps = 20_000
    c.optimizer.learning_rate = 2e-4
    c.optimizer.warmup_steps = 500
    c.sample.solver = "dpmpp_2m"
    c.sample.grid = "log_snr"
    c.sample.num_steps = 20
    c.sample.num_samples = 100
    if arg == "runlocal":
        common.runlocal(c)
        c.model.kwargs.ch = 8
        c.model.kwargs.num_res_blocks = 1
        c.model.kwargs.attn_resolutions = ()
    return c
