"""Starts the real `tritonserver` (bundled in the nvidia-pytriton wheel) on a model repository."""
