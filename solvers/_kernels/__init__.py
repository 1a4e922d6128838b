"""The solver kernel layer (private): the mathematics every solver shares, once each.

Layers point downwards (docs/architecture.md): ``combprune.problems`` -> these kernels ->
the public solver modules of ``combprune.solvers`` -> ``combprune.api``. A kernel imports
problems and other kernels, never a public solver module; a public solver module imports
kernels and problems, never another public solver module (``tests/test_architecture.py``).

Modules (one job each): ``linalg`` (the SPD solve / inverse), ``columns`` (products with A
where it lives), ``budget`` rules via :mod:`combprune.problems.budget`, ``selection`` (top-k,
greedy fills), ``flop_nnz`` (the FLOP-NNZ ILP by its LP dual), ``projections`` (the L0
projector), ``warm_start``, ``options``, ``l0_data``, ``ridge`` (back-solve on a support),
``support_factor`` (typed Woodbury factor with add/drop updates), ``iht_engine``, ``refine``,
``l0_family`` (the configurable L0 pipeline), ``exact``, ``structured``, ``layerwise``,
``layerwise_exact``, ``obs_sweep`` (SparseGPT's sweep).
"""
