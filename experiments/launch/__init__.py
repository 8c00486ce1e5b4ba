"""Launchers: the same experiments command on every process of a job.

local.py    N processes on this machine (forced CPU devices), for tests and debugging
tpu_vm.py   every worker of a Cloud TPU VM slice through `gcloud compute tpus tpu-vm ssh --worker=all`
slurm.py    an sbatch script: `srun` with one process per GPU or per node

Each prints what it would run with --dry_run. See docs/scaling.md.
"""
