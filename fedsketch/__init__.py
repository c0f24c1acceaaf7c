"""Federated frequency estimation with count sketches under secure summation and distributed DP."""
