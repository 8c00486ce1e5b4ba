"""Test configuration: float64 (as diffrax's tests), strict rank promotion, a compile cache.

Tests that check float32 behaviour create float32 arrays explicitly.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
_cache = os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
