"""flower experiments: the Flower federated-analytics app and its experiment.

Modules, from the bottom up (imports point down only; `make lint` checks it): `exact_sum` and `settings` (pure data),
`task` (the client's data and tables), `two_phase` and `privacy`, the apps `client_app` / `server_app` and the
`inprocess` backend, `decode` (server-side decoding), `evaluate` (the evaluation oracle), `ffe_flower` (the
experiment), `deployment` (the deployed ServerApp).
"""

# name -> module that registers it (imported only when the experiment runs)
EXPERIMENTS: dict[str, str] = {
    "ffe-flower": "simulations.flower.ffe_flower",
    "fl-icl": "simulations.flower.training.fl_icl",
    "fl-lm-shakespeare": "simulations.flower.training.fl_lm",
}

