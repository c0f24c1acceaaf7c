"""theory experiments: optimization and statistics results as runnable experiments with the theory overlaid."""

# name -> module that registers it (imported only when the experiment runs)
EXPERIMENTS: dict[str, str] = {
    "scaling-law-linear": "simulations.theory.scaling_law",
    "large-stepsize-logistic": "simulations.theory.large_stepsize_logistic",
    "eos-logistic": "simulations.theory.eos_logistic",
    "large-stepsize-two-layer": "simulations.theory.large_stepsize_two_layer",
    "asgd-vs-sgd": "simulations.theory.asgd_vs_sgd",
    "label-noise-rank-one": "simulations.theory.label_noise",
    "mup-depth": "simulations.theory.mup_depth",
    "beta2-stability": "simulations.theory.beta2_stability",
}
