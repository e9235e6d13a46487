"""Kubernetes: the Helm chart and its manifests on a real API server."""
