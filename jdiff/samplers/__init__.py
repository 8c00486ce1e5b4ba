"""Samplers: time grids, fixed-step solvers (one `lax.scan`), and diffrax ODE/SDE solves.

model = jdiff.Model(net, path, "eps")
grid = jdiff.samplers.log_snr_grid(path, 20)
x = jdiff.samplers.sample(jdiff.samplers.DPMSolverPP2M(), model, x_T, grid)
grid = jdiff.samplers.optimize_grid(jdiff.samplers.UniPC(), model, key, x_T, 10).grid
"""

from jdiff.samplers._base import AbstractSolver as AbstractSolver
from jdiff.samplers._base import sample as sample
from jdiff.samplers._fixed import DDIM as DDIM
from jdiff.samplers._fixed import DDPM as DDPM
from jdiff.samplers._fixed import LMS as LMS
from jdiff.samplers._fixed import DPMSolver as DPMSolver
from jdiff.samplers._fixed import DPMSolver2M as DPMSolver2M
from jdiff.samplers._fixed import DPMSolverPP2M as DPMSolverPP2M
from jdiff.samplers._fixed import DPMSolverPP2MSDE as DPMSolverPP2MSDE
from jdiff.samplers._fixed import DPMSolverPP3M as DPMSolverPP3M
from jdiff.samplers._fixed import Euler as Euler
from jdiff.samplers._fixed import EulerMaruyama as EulerMaruyama
from jdiff.samplers._fixed import Heun as Heun
from jdiff.samplers._fixed import PredictorCorrector as PredictorCorrector
from jdiff.samplers._fixed import UniPC as UniPC
from jdiff.samplers._grids import karras_grid as karras_grid
from jdiff.samplers._grids import log_snr_grid as log_snr_grid
from jdiff.samplers._grids import quadratic_grid as quadratic_grid
from jdiff.samplers._grids import uniform_grid as uniform_grid
from jdiff.samplers._grids import save_grid as save_grid
from jdiff.samplers._grids import load_grid as load_grid
from jdiff.samplers._optimize import GlobalError as GlobalError
from jdiff.samplers._optimize import LocalError as LocalError
from jdiff.samplers._optimize import OptimizedGrid as OptimizedGrid
from jdiff.samplers._optimize import grid_from_logits as grid_from_logits
from jdiff.samplers._optimize import logits_from_grid as logits_from_grid
from jdiff.samplers._optimize import optimize_grid as optimize_grid
from jdiff.samplers._base import check_grid as check_grid
from jdiff.samplers._ode import ODESolution as ODESolution
from jdiff.samplers._ode import diffrax_evals as diffrax_evals
from jdiff.samplers._ode import pf_ode_term as pf_ode_term
from jdiff.samplers._ode import solve_pf_ode as solve_pf_ode
from jdiff.samplers._sde import SDESolution as SDESolution
from jdiff.samplers._sde import solve_reverse_sde as solve_reverse_sde
