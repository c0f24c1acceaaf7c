"""dp experiments: DP² (delayed preconditioners) against tuned DP baselines, on real and synthetic data."""

# name -> module that registers it (imported only when the experiment runs)
EXPERIMENTS: dict[str, str] = {
    "dp2-imdb": "simulations.dp.imdb",
    "dp2-sparse": "simulations.dp.sparse",
    "dp2-movielens": "simulations.dp.movielens",
    "dp2-delay": "simulations.dp.delay",
    "dp2-imdb-transformer": "simulations.dp.transformer",
}
