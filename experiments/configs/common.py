"""The keys every config has, with neutral defaults; configs override what they change.

Not a config itself (it has no get_config). See experiments/_config.py for what each key means
(and experiments/_recipes.py for the optional `flowmap` section).
"""

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 128  # global, over all devices and processes
    c.total_steps = 10_000
    c.ema_decay = 0.999
    c.max_nonfinite_steps = 10  # stop after this many consecutive non-finite steps
    c.distributed = False  # call jax.distributed.initialize() (multi-host pods)
    c.num_devices = config_dict.placeholder(int)  # None: every visible device on the "data" axis

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.kwargs = ml_collections.ConfigDict()
    c.data.shape = (8, 8, 1)  # one example
    c.data.cond = config_dict.placeholder(str)  # "label" for class-conditional models
    c.data.holdout = 0.0  # fraction held out of training (jdiff.data.holdout_split, seed = c.seed); evaluate uses it

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"
    c.model.kwargs = ml_collections.ConfigDict()
    c.model.preconditioning = "none"  # "edm": the network is EDM's F inside edm_denoiser
    c.model.sigma_data = 0.5

    c.path = ml_collections.ConfigDict()
    c.path.name = "linear"
    c.path.kwargs = ml_collections.ConfigDict()

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "cfm_loss"
    c.loss.kwargs = ml_collections.ConfigDict()  # the loss's plain options (numbers, strings of the loss)
    c.loss.time_sampler = config_dict.placeholder(str)  # experiments._names.TIME_SAMPLERS; None: the loss's default
    c.loss.time_sampler_kwargs = ml_collections.ConfigDict()
    c.loss.weighting = config_dict.placeholder(str)  # experiments._names.WEIGHTINGS; None: the loss's default
    c.loss.weighting_kwargs = ml_collections.ConfigDict()
    c.loss.label_dropout = 0.0  # p of jdiff.guidance.with_label_dropout (null class: model.kwargs.num_classes)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 200
    c.optimizer.schedule = "cosine"
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.weight_decay = 0.0
    c.optimizer.grad_clip_norm = 1.0

    c.sample = ml_collections.ConfigDict()
    c.sample.solver = "heun"
    c.sample.solver_kwargs = ml_collections.ConfigDict()
    c.sample.grid = "uniform"
    c.sample.num_steps = 20
    c.sample.num_samples = 64

    c.log_every = 100
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.sample_every = 2000  # 0: no sample grids during training
    return c


def runlocal(c: ml_collections.ConfigDict, steps: int = 6) -> ml_collections.ConfigDict:
    """Shrink a config to a seconds-long smoke run (a few steps, small batches, every output once)."""
    c.batch_size = 16
    c.total_steps = steps
    c.optimizer.warmup_steps = 2
    c.log_every = 2
    c.checkpoint_every = steps // 2
    c.sample_every = steps
    c.sample.num_steps = 4
    c.sample.num_samples = 16
    return c
