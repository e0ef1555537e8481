"""Compilation time inside timed windows, for benchmarks that must exclude it.

JAX reports the spans of tracing, lowering and XLA compilation to ``jax.monitoring``
listeners; :func:`compile_seconds` sums those inside a window, and :class:`TimedTrainer`
remembers each CRONOS-AM round's window (backbone phase + features + solve).
"""

import time

import jax
import numpy as np

from flax_cronos.trainer import AlternatingTrainer

# jax._src.dispatch's compilation events (JAXPR_TRACE_EVENT, JAXPR_TO_MLIR_MODULE_EVENT,
# BACKEND_COMPILE_EVENT); their time spans are reported to jax.monitoring listeners
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
_compile_spans: list[tuple[float, float]] = []


def _on_span(event: str, start: float, end: float, **_) -> None:
    if event in COMPILE_EVENTS:
        _compile_spans.append((start, end))


jax.monitoring.register_event_time_span_listener(_on_span)


def compile_seconds(window: tuple[float, float]) -> float:
    """Seconds of the union of compilation spans (time.time()) inside ``window``."""
    lo, hi = window
    spans = sorted((max(s, lo), min(e, hi)) for s, e in _compile_spans if e > lo and s < hi)
    total, end = 0.0, -np.inf
    for s, e in spans:                     # nested spans (a jit traced inside a jit) count once
        if e > end:
            total += e - max(s, end)
            end = e
    return total


class TimedTrainer(AlternatingTrainer):
    """AlternatingTrainer that remembers each round's timed window (backbone phase + solve)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.windows: dict[int, tuple[float, float]] = {}

    def _backbone_phase(self, state, train_step, inputs, targets, round_, progress):
        self._round_start = time.time()
        return super()._backbone_phase(state, train_step, inputs, targets, round_, progress)

    def _solve_phase(self, state, network, inputs, labels, beta, round_, progress):
        result = super()._solve_phase(state, network, inputs, labels, beta, round_, progress)
        self.windows[round_] = (self._round_start, time.time())
        return result


