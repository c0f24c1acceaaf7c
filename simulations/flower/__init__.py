"""flower experiments: the Flower federated-analytics app (client_app, server_app, task) and its experiment."""

# name -> module that registers it (imported only when the experiment runs)
EXPERIMENTS: dict[str, str] = {"ffe-flower": "simulations.flower.ffe_flower"}
