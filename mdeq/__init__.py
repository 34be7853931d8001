"""MDEQ: multiscale deep equilibrium models, solvers and implicit differentiation (torch only)."""
