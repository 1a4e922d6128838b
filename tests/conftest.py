"""Test-session settings shared by every test module.

The suite runs with ``pytest -n 2`` on 2-core machines: one BLAS/OpenMP thread per worker
avoids oversubscription (multithreaded small BLAS calls slow down by orders of magnitude when
the cores are already busy). Set before NumPy/torch are imported by any test module.
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from hypothesis import settings  # noqa: E402

# Property tests draw the same examples on every run (reproducible CI); set
# HYPOTHESIS_PROFILE=explore to draw fresh random examples when hunting for bugs.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
