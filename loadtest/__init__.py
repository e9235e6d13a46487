"""Load generator and capacity report for the public APIs (`python -m loadtest`, `glmvoice loadtest`).

Real speech, paced as 20 ms frames, in every input format the API takes; workloads from fixed concurrency to
Poisson arrivals; one record per turn (TTFA, server stages, underrun, continuity), a summary and a report.
Modules: speech (what callers say), metrics (what a turn measured), grpc_driver / ws_driver (the two doors),
workloads (who calls when), capacity and quality (searches over runs), report (plots), stack (a local system),
cli (the command), bench/ (the benchmarks `make bench` prints).
"""
