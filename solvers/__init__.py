"""Built-in solvers (``combprune.solvers``).

Every public module here registers its solvers with :func:`combprune.register_solver` when
imported; the registry imports them all on first use, so adding a solver means adding a module.
Drivers that run solvers (the multi-stage CHITA++ / FALCON++ loop) live above the registry, in
:mod:`combprune.multistage`.
"""
