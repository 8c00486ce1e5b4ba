"""Solvers by name, for configs (experiments/): `get_solver("dpmpp_2m")`."""

from __future__ import annotations

from jdiff.samplers import _fixed

__all__ = ["SOLVERS", "get_solver"]

SOLVERS = {
    "ddpm": _fixed.DDPM,
    "ddim": _fixed.DDIM,
    "euler": _fixed.Euler,
    "heun": _fixed.Heun,
    "dpm_solver": _fixed.DPMSolver,
    "dpmpp_2m": _fixed.DPMSolverPP2M,
    "dpmpp_3m": _fixed.DPMSolverPP3M,
    "dpmpp_2m_sde": _fixed.DPMSolverPP2MSDE,
    "unipc": _fixed.UniPC,
    "lms": _fixed.LMS,
    "euler_maruyama": _fixed.EulerMaruyama,
    "pc": _fixed.PredictorCorrector,
}


def get_solver(name: str, **kwargs):
    """A solver by name (one of `SOLVERS`) with its keyword arguments, e.g. get_solver("ddim", eta=1.0).

    For "pc", `predictor` may itself be a name: get_solver("pc", predictor="euler_maruyama", snr=0.1).
    """
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r} for `name`; accepted: {', '.join(SOLVERS)}")
    if name == "pc" and isinstance(kwargs.get("predictor"), str):
        kwargs["predictor"] = get_solver(kwargs["predictor"])
    return SOLVERS[name](**kwargs)
