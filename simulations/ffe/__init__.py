"""ffe experiments: federated frequency estimation with count sketches (Wu, Zhu, Kairouz, Braverman, NeurIPS 2023)."""

# name -> module that registers it (imported only when the experiment runs)
EXPERIMENTS: dict[str, str] = {
    "ffe-single": "simulations.ffe.single",
    "ffe-multiround": "simulations.ffe.multiround",
    "ffe-two-phase": "simulations.ffe.two_phase",
    "ffe-dp": "simulations.ffe.dp",
}
