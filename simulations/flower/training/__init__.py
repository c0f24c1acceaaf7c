"""Federated training through Flower: the shared core's models on (GPU) clients.

Modules, from the bottom up: `settings` (a run's validated settings), `rotation` (the shared randomized Hadamard
transform), `ddp` (client-level distributed DP: clip, rotate, round, Skellam shares, exact SecAgg+ sum, accounting),
`sampling` (Poisson client sampling), `server_opt` (FedAvg, FedAdam, the DP² server optimizer), `workloads` (the
shared core's models on non-IID clients), `local` (a client's round through the shared Trainer, optionally with
example-level DP), `engine` (the server's round logic, privacy accounting and checkpoint/resume, with an in-process
driver), `apps` (the Message-API app pair), `secagg` (the SecAgg+ app pair for distributed DP), `simulate` (guarded
`run_simulation`), `deploy` (the ServerApp component for `flwr run`), and the experiments `fl_lm` and `fl_icl`.
"""
