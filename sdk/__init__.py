"""Fedge: edge-to-cloud federated inference SDK (``sdk.edge`` on devices, ``sdk.cloud`` on servers)."""
