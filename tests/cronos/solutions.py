"""Comparing two solutions of the same program (sharded or streamed against in memory)."""

from typing import Optional

import numpy as np
import pytest

from flax_cronos import cronos
from flax_cronos.cronos import cone

# A relu solve's cone projections are exact to their tolerance, 0.01 √eps ‖x_j‖ ‖z‖
# (``cone.projection_tolerance``): two float64 solves whose rounding differs can accept
# projections that far apart, and ADMM carries the difference along (3e-10 of the largest weight
# after 60 iterations of the sharded test); the gated solves agree to 1e-13.
RELU_FLOAT64_RTOL = 10 * cone.projection_tolerance(np.float64)


def assert_same_solution(got: cronos.Solution, want: cronos.Solution, rtol: float,
                         weights_rtol: Optional[float] = None, statistics: bool = True):
    """Weights to ``weights_rtol`` (default ``rtol``) of the largest weight, and so the penalty
    (β times a sum of the weights' group norms) relative; objective, loss and ρ to ``rtol``
    relative; with ``statistics`` the dimensionless ones (gap, residuals, violation) to
    ``rtol`` absolute; iteration count and status exactly."""
    tolerance = rtol if weights_rtol is None else weights_rtol
    for a, b in ((got.params.v, want.params.v), (got.params.w, want.params.w)):
        if b is not None:
            scale = np.max(np.abs(np.asarray(b)))
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=tolerance * scale)
    np.testing.assert_array_equal(got.params.gates, want.params.gates)
    for name in ("objective", "loss", "rho"):
        assert getattr(got.stats, name) == pytest.approx(getattr(want.stats, name), rel=rtol), name
    assert got.stats.penalty == pytest.approx(want.stats.penalty, rel=tolerance)
    if statistics:
        for name in ("constraint_violation", "duality_gap", "primal_residual", "dual_residual"):
            assert getattr(got.stats, name) == pytest.approx(getattr(want.stats, name), abs=rtol), name
    assert got.stats.iterations == want.stats.iterations
    assert got.status == want.status
