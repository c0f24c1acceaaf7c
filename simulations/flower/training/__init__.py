"""Federated training through Flower (issue 11, in progress): the building blocks.

Modules, from the bottom up: `settings` (a run's validated settings), `rotation` (the shared randomized Hadamard
transform), `ddp` (client-level distributed DP: clip, rotate, round, Skellam shares, exact SecAgg+ sum, accounting),
`sampling` (Poisson client sampling), `server_opt` (FedAvg, FedAdam, the DP² server optimizer), `workloads` (the
shared core's models on non-IID clients), `local` (a client's round through the shared Trainer), `engine` (the
server's round logic, privacy accounting and checkpoint/resume, with an in-process driver). The Message-API apps,
the experiments and the benchmark are not built yet.
"""
