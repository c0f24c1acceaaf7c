"""flower experiments."""

# name -> module that registers it (imported only when the experiment runs)
EXPERIMENTS: dict[str, str] = {}
