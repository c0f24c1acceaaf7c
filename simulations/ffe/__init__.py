"""ffe experiments: federated frequency estimation with count sketches (issue 2, Part 3)."""

# name -> module that registers it (imported only when the experiment runs)
EXPERIMENTS: dict[str, str] = {
    "ffe-single": "simulations.ffe.single",
    "ffe-multiround": "simulations.ffe.multiround",
    "ffe-two-phase": "simulations.ffe.two_phase",
    "ffe-dp": "simulations.ffe.dp",
}
