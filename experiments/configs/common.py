"""The keys every config has, with neutral defaults; configs override what they change.

Not a config itself (it has no get_config). See experiments/_config.py for what each key means
(and experiments/_recipes.py for the optional `flowmap` section).
"""

import ml_collections
from ml_collections import config_dict

from jdiff.parallel import FSDP_RULES


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 128  # global, over all devices and processes
    c.total_steps = 10_000
    c.ema_decay = 0.999
    c.max_nonfinite_steps = 10  # stop after this many consecutive non-finite steps
    # Processes (docs/scaling.md): True calls jax.distributed.initialize(), which auto-detects TPU VMs
    # and SLURM; None below falls back to JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
    # (the experiments/launch scripts export them; JAX_NUM_PROCESSES > 1 alone starts the runtime).
    c.distributed = False
    c.coordinator_address = config_dict.placeholder(str)  # "host:port" of process 0
    c.num_processes = config_dict.placeholder(int)
    c.process_id = config_dict.placeholder(int)
    c.num_devices = config_dict.placeholder(int)  # None: every visible device (else as many from each process)
    # Mesh axis sizes (one may be -1: the rest) and logical-axis rules for parameters, optimizer and
    # EMA state: fsdp=N shards them N ways, model=N splits wide layers (tensor parallelism).
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.model = 1
    c.mesh.rules = FSDP_RULES  # (logical name, mesh axis or None) pairs

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.kwargs = ml_collections.ConfigDict()
    c.data.shape = (8, 8, 1)  # one example
    c.data.cond = config_dict.placeholder(str)  # "label" for class-conditional models
    c.data.holdout = 0.0  # fraction held out of training (jdiff.data.holdout_split, seed = c.seed); evaluate uses it
    c.data.pipeline = "auto"  # jdiff.data.make_iterator: "grain" | "memory" | "auto" (grain for images)

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"
    c.model.kwargs = ml_collections.ConfigDict()
    c.model.preconditioning = "none"  # "edm": the network is EDM's F inside edm_denoiser
    c.model.sigma_data = 0.5
    # "bfloat16": the network's matmuls and convolutions in bf16 with float32 master weights,
    # optimizer state, norms, softmax, clock and loss (jdiff.Policy); "float32": all float32.
    c.model.compute_dtype = "float32"

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
    # Post-hoc EMA (experiments/_phema.py, docs/evaluation.md): power-function EMA profiles tracked in
    # the train state and snapshotted to workdir/phema/, e.g. sigma_rels = (0.05, 0.10) as EDM2.
    c.posthoc_ema = ml_collections.ConfigDict()
    c.posthoc_ema.sigma_rels = ()  # () tracks none
    c.posthoc_ema.snapshot_every = 0  # steps between snapshots; 0: every checkpoint_every
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
