"""Entry points of the Kubernetes Jobs: `python -m training.jobs.train` and `python -m training.jobs.evaluate`."""
