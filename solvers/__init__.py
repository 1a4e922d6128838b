"""Built-in solvers (``combprune.solvers``).

Every public module here registers its solvers with :func:`combprune.register_solver` when
imported; the registry imports them all on first use, so adding a solver means adding a module.
"""

from .staging import multistage, sparsity_schedule

__all__ = ["multistage", "sparsity_schedule"]
