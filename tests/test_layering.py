"""DESIGN.md's layering: the solver never imports Flax, Optax or Orbax."""

import subprocess
import sys


def test_the_solver_imports_no_flax_optax_or_orbax():
    code = ("import sys, flax_cronos.cronos, flax_cronos; "
            "print(sorted(m for m in ('flax', 'optax', 'orbax') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
