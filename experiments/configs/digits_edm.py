"""EDM on the 8x8 digits (Karras et al. 2022): preconditioned U-Net, log-normal noise levels, Heun.

python -m experiments.train --config=experiments/configs/digits_edm.py --workdir=runs/digits_edm
python -m experiments.train --config=experiments/configs/digits_edm.py:runlocal --workdir=/tmp/digits_edm

The path is VE with EDM's sigma range [0.002, 80]; the network F sees c_in x and
c_noise = log(sigma) / 4 and the model is the denoiser c_skip x + c_out F (jdiff.edm_denoiser).
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
    c.model.kwargs.ch_mult = (1, 2)
    c.model.kwargs.num_res_blocks = 2
    c.model.kwargs.attn_resolutions = (4,)
    c.model.kwargs.dropout = 0.1
    c.model.kwargs.kind = "x0"  # of the preconditioned denoiser
    c.model.preconditioning = "edm"
    c.model.sigma_data = 0.5  # EDM's default; the digits in [-1, 1] have std ~0.6
    c.path.name = "ve"  # sigma(t) = 0.002^(1-t) 80^t
    c.loss.name = "edm_loss"  # log sigma ~ N(-1.2, 1.2^2), weight 1 / c_out^2
    c.batch_size = 128
    c.total_steps = 20_000
    c.optimizer.learning_rate = 2e-4
    c.optimizer.warmup_steps = 500
    c.sample.solver = "heun"  # EDM's 2nd-order sampler on rho = 7 steps: NFE = 2N - 1
    c.sample.grid = "karras"
    c.sample.num_steps = 18
    c.sample.num_samples = 100
    if arg == "runlocal":
        common.runlocal(c)
        c.model.kwargs.ch = 8
        c.model.kwargs.num_res_blocks = 1
        c.model.kwargs.attn_resolutions = ()
    return c
