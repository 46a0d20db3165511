"""Fedge on the device: run a verified, quantized model locally.

Importing this package loads neither torch, flwr, fastapi nor sqlalchemy.
"""

from sdk.backends import Backend
from sdk.edge.config import EdgeConfig
from sdk.edge.prediction import BatchPrediction, Prediction, Source
from sdk.edge.runtime import EdgeRuntime, LoadedModel, load_model

__all__ = [
    "Backend",
    "BatchPrediction",
    "EdgeConfig",
    "EdgeRuntime",
    "LoadedModel",
    "Prediction",
    "Source",
    "load_model",
]
