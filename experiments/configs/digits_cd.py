"""Consistency distillation (Song et al. 2023) of the digits EDM teacher into a 1-4 step sampler.

python -m experiments.train --config=experiments/configs/digits_edm.py --workdir=runs/digits_edm
python -m experiments.train --config=experiments/configs/digits_cd.py --config.flowmap.teacher_workdir=runs/digits_edm --workdir=runs/digits_cd
python -m experiments.train --config=experiments/configs/digits_cd.py:runlocal --workdir=/tmp/digits_cd

The student has the teacher's U-Net and starts from its EMA weights; as a flow map it is the
DDIM jump f(x, t, t_min) = (sigma_min / sigma) x + (1 - sigma_min / sigma) D(x, t) with the
EDM-preconditioned denoiser D (jdiff.flowmaps.DDIMDenoiser, whose c_out is Song et al.'s), so
at initialisation it is one DDIM step of the teacher. Loss: consistency_distillation_loss with
one Heun step of the teacher between adjacent levels of N = 18 Karras levels (their CD setting),
pseudo-Huber distance, and the EMA weights as the target network f^- (config.flowmap.target =
"ema": the train state's EMA, decay config.ema_decay with warmup; Song et al. use a separate
target EMA of decay 0.95, and benchmarks/bench_flowmaps.py found an EMA target better than the
online one). Sampling: multistep consistency sampling with re-noising (gamma = 1),
config.flowmap.num_steps steps.
arg: "runlocal" shrinks the run to a few seconds with a freshly initialised teacher.
"""

from experiments.configs import common, digits_edm
from experiments.configs.toy_shortcut import flowmap_section


def get_config(arg=None):
    teacher = digits_edm.get_config(arg)
    c = common.base_config()
    c.data = teacher.data
    c.model.name = teacher.model.name
    c.model.kwargs = teacher.model.kwargs
    c.model.sigma_data = teacher.model.sigma_data
    c.path = teacher.path  # VE, EDM's sigma range: the student follows the teacher's PF-ODE
    c.loss.name = "flowmaps.consistency_distillation_loss"
    c.loss.kwargs.num_scales = 18
    c.flowmap = flowmap_section(param="ddim_denoiser", num_steps=2, gamma=1.0)
    c.flowmap.sigma_data = teacher.model.sigma_data
    c.flowmap.time_input = "edm"  # the U-Net sees c_noise = log(sigma) / 4, as the teacher did
    c.flowmap.teacher_config = "experiments/configs/digits_edm.py" + (":runlocal" if arg == "runlocal" else "")
    c.flowmap.teacher_solver = "heun"
    c.flowmap.init_from_teacher = True
    c.flowmap.target = "ema"
    c.batch_size = 128
    c.total_steps = 5000
    c.ema_decay = 0.9999
    c.optimizer.learning_rate = (
        1e-4  # fine-tunes the teacher's weights (Song et al. 2023 initialise CD from the teacher)
    )
    c.optimizer.warmup_steps = 100
    c.sample.num_samples = 100
    c.sample_every = 1000
    if arg == "runlocal":
        common.runlocal(c)
    return c
