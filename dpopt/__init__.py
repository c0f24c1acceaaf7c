"""DP² (delayed-preconditioner) optimizers for Opacus, DP baselines and privacy accounting reports."""
