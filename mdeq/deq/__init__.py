"""The equilibrium layer: options, the solve with its gradient modes, Jacobian diagnostics."""
