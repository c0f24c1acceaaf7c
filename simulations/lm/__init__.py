"""lm experiments: language-model pretraining on the shared core — anchors, growth (MIDAS, LAG), SALT, critical batch size, LITE."""

# name -> module that registers it (imported only when the experiment runs)
EXPERIMENTS: dict[str, str] = {
    "lm-salt": "simulations.lm.salt",
    "lm-cbs": "simulations.lm.cbs",
    "lite-ranking": "simulations.lm.lite_ranking",
}
