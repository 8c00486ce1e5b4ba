"""Class-conditional flow matching on the 8x8 digits with classifier-free guidance.

python -m experiments.train --config=experiments/configs/digits_cfg.py --workdir=runs/digits_cfg
python -m experiments.sample --workdir=runs/digits_cfg --guidance_weight=1.5
python -m experiments.train --config=experiments/configs/digits_cfg.py:runlocal --workdir=/tmp/digits_cfg

The residual MLP of digits_mlp.py with a class embedding (10 digits + the null class 10).
Training drops each label to the null class with probability 0.1 (Ho & Salimans 2022 use
0.1-0.2), so the one network is both the conditional and the unconditional model.
Sampling applies jdiff.guidance.classifier_free with `guidance.weight` (1 = conditional
model, > 1 = stronger guidance) on `guidance.interval` (None: every t); experiments.sample
then writes one row per class and reports the held-out digit classifier's accuracy on the
generated classes (jdiff.metrics).
arg: "runlocal" shrinks the run to a few seconds.
"""

import ml_collections

from experiments.configs import common

NUM_CLASSES = 10


def get_config(arg=None):
    c = common.base_config()
    c.data.name = "digits"
    c.data.shape = (8, 8, 1)
    c.data.holdout = 0.1  # 180 digits never trained on: experiments.evaluate's NLL / sample-metric split
    c.data.cond = "label"
    c.model.name = "mlp"
    c.model.kwargs.in_features = 8 * 8 * 1
    c.model.kwargs.hidden = 256
    c.model.kwargs.depth = 3
    c.model.kwargs.kind = "velocity"
    c.model.kwargs.num_classes = NUM_CLASSES  # embedding rows 0..9 and the null class 10
    c.path.name = "linear"
    c.loss.name = "cfm_loss"
    c.loss.label_dropout = 0.1  # jdiff.guidance.with_label_dropout(cfm_loss, 0.1, null_class=NUM_CLASSES)
    c.batch_size = 256
    c.total_steps = 3000
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 200
    c.sample.solver = "heun"
    c.sample.num_steps = 20
    c.sample.num_samples = 100  # 10 per class: one row per class
    c.sample_every = 1000
    c.checkpoint_every = 500

    c.guidance = ml_collections.ConfigDict()
    c.guidance.weight = 1.5  # D_null + w (D_cond - D_null); 1 = the conditional model (see docs/guidance.md)
    c.guidance.interval = ml_collections.config_dict.placeholder(tuple)  # (t_lo, t_hi) or None
    c.guidance.rescale = 0.0  # CFG rescale phi (Lin et al. 2024)
    if arg == "runlocal":
        common.runlocal(c)
        c.sample.num_samples = 20
        c.model.kwargs.hidden = 32
        c.model.kwargs.depth = 1
    return c
