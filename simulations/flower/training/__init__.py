"""Federated training through Flower (issue 11, in progress): the building blocks.

Modules, from the bottom up: `settings` (a run's validated settings), `rotation` (the shared randomized Hadamard
transform), `ddp` (client-level distributed DP: clip, rotate, round, Skellam shares, exact SecAgg+ sum, accounting),
`sampling` (Poisson client sampling), `server_opt` (FedAvg, FedAdam, the DP² server optimizer), `workloads` (the
shared core's models on non-IID clients). The Message-API apps and the experiments are not built yet.
"""
