"""Fedge in the cloud: inference workers, HTTP endpoint, model registry and releases."""
