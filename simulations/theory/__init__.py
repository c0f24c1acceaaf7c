"""theory experiments: optimization and statistics results as runnable experiments with the theory overlaid."""

# name -> module that registers it (imported only when the experiment runs)
EXPERIMENTS: dict[str, str] = {
    "scaling-law-linear": "simulations.theory.scaling_law",
}
