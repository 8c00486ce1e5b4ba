"""Post-hoc EMA in the experiments layer: the config section, and the snapshots the train loop
writes next to its checkpoints (jdiff.posthoc_ema does the maths).

Config section (experiments/configs/common.py sets it; workdirs written before it have none):

    posthoc_ema.sigma_rels       relative stds of the power-function EMA profiles tracked in the
                                 train state, e.g. (0.05, 0.10) as EDM2; () tracks none
    posthoc_ema.snapshot_every   steps between snapshots in workdir/phema/ (0: every
                                 checkpoint_every); the last step always gets one

Snapshots are never deleted by checkpoint rotation (keep_checkpoints): post-hoc reconstruction
needs the whole history. `python -m experiments.posthoc_ema` sweeps EMA lengths against a metric.
"""

from __future__ import annotations

import os

from experiments._config import ConfigError
from jdiff import posthoc_ema

__all__ = ["PHEMA_DIR", "maybe_save_snapshot", "sigma_rels", "snapshot_every"]

PHEMA_DIR = "phema"


def _section(config):
    return config.get("posthoc_ema", None)


def sigma_rels(config) -> tuple[float, ...]:
    """config.posthoc_ema.sigma_rels as floats, checked to lie in (0, 1/sqrt(12)); () when absent."""
    s = _section(config)
    values = tuple(s.get("sigma_rels", ()) or ()) if s is not None else ()
    try:
        values = tuple(float(v) for v in values)
        if values:
            posthoc_ema.sigma_rel_to_gamma(values)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"config.posthoc_ema.sigma_rels: {values!r} is not a sequence of relative stds; accepted: "
            f"floats in (0, {posthoc_ema.SIGMA_REL_MAX:.4f}), e.g. (0.05, 0.10)"
        ) from e
    return values


def snapshot_every(config) -> int:
    """Steps between post-hoc EMA snapshots (config.posthoc_ema.snapshot_every, 0: checkpoint_every)."""
    s = _section(config)
    every = s.get("snapshot_every", 0) if s is not None else 0
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ConfigError(f"config.posthoc_ema.snapshot_every: {every!r}; accepted: an int >= 0 (0: checkpoint_every)")
    return every or int(config.checkpoint_every)


def maybe_save_snapshot(config, workdir: str, step: int, state, *, last: bool = False) -> str | None:
    """Write workdir/phema/phema_<step>.npz when the config tracks profiles and `step` is due (or
    `last`); every process calls it (a collective on pods), process 0 writes. Returns the path."""
    if not sigma_rels(config) or not (last or step % snapshot_every(config) == 0):
        return None
    # A resumed run rewrites the snapshot of a step it repeats: the same values (resumes are exact).
    return posthoc_ema.save_snapshot(os.path.join(workdir, PHEMA_DIR), step, state.power_ema)
