"""glmvoice's processes: the Triton launcher, orchestrator, gateway and promoter."""
