"""The solver's products in true float32 (or float64) on every backend.

JAX computes a float32 product at its backend's default precision: TensorFloat-32 on recent
NVIDIA GPUs (10 mantissa bits, relative error near 1e-3) and a bfloat16 pass on TPUs. That
suits a network's layers, not this solver: its duality-gap certificate (``tol`` 1e-4), its
residual tests and the Lawson–Hanson multipliers of ``cone.py`` rely on products as accurate
as the dtype's rounding (6e-8 in float32). The solver's entry points, ``admm.solve`` and
``path.solve_path``, therefore trace under ``jax.default_matmul_precision("highest")``; code
that drives the steps itself (``admm.prepare``, ``iterate``, ``finish``, as a benchmark does)
wraps itself in ``full_precision``. JAX keys its compiled programs on that setting, so the
caller's own default (set globally or in a context) neither reaches the solver nor is changed
for the caller's code. Predictions (``network.predict``) follow the caller's setting, as a
network's layers do.

On CPU the setting changes nothing: XLA's CPU products are float32 either way (the pattern Gram
product at n = 20,000 and a 4096² matmul took the same time with and without it).
"""

import functools

import jax

PRECISION = "highest"


def full_precision(function):
    """``function``, traced and run with every product at ``PRECISION``."""

    @functools.wraps(function)
    def at_full_precision(*args, **kwargs):
        with jax.default_matmul_precision(PRECISION):
            return function(*args, **kwargs)

    return at_full_precision
