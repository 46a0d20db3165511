"""Federated training with Flower, and the export pipeline that turns models into releases."""
