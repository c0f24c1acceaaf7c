"""lm experiments: language-model pretraining on the shared core — anchors, growth (MIDAS, LAG), SALT, critical batch size, LITE."""

# name -> module that registers it (imported only when the experiment runs)
EXPERIMENTS: dict[str, str] = {
    "lm-shakespeare-char": "simulations.lm.shakespeare_char",
    "lm-wikitext2": "simulations.lm.wikitext2",
    "lm-midas": "simulations.lm.midas",
    "lm-lag": "simulations.lm.lag",
    "lm-salt": "simulations.lm.salt",
    "lm-cbs": "simulations.lm.cbs",
    "lite-ranking": "simulations.lm.lite_ranking",
}
