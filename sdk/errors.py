"""Every error Fedge raises on purpose, in one tree.

```
FedgeError
├── ConfigError                 a config file, table, key or value is wrong
├── InvalidInput                an input the model cannot take
│   ├── InputShapeError         shape does not match the manifest
│   ├── InputDtypeError         dtype cannot be cast to the manifest's dtype
│   └── NonFiniteInput          NaN or infinity under the "reject" policy
├── ModelError                  a model directory cannot be used
│   ├── ModelNotFound           no manifest, or no artifact for this device
│   ├── ManifestError           manifest.json is malformed
│   └── ModelIntegrityError     a file is missing, truncated, corrupted or tampered with
├── BackendUnavailable          the runtime package or execution provider is not installed
├── BackendError                the inference engine failed while running a loaded model
└── ExportError                 the export pipeline cannot produce a model directory
    └── AccuracyGateFailed      an int8 or pruned artifact lost too much accuracy
```

Misuse of the API (calling a closed runtime, a negative argument) raises the
built-in ``ValueError``/``RuntimeError`` instead, so that a handler for
``FedgeError`` only ever sees failures of data, files or the environment.
Errors of foreign libraries are translated where they are called and raised
``from`` the original.
"""

from __future__ import annotations

__all__ = [
    "AccuracyGateFailed",
    "BackendError",
    "BackendUnavailable",
    "ConfigError",
    "ExportError",
    "FedgeError",
    "InputDtypeError",
    "InputShapeError",
    "InvalidInput",
    "ManifestError",
    "ModelError",
    "ModelIntegrityError",
    "ModelNotFound",
    "NonFiniteInput",
]


class FedgeError(Exception):
    """Root of every error Fedge raises on purpose."""


class ConfigError(FedgeError):
    """A configuration file, key or value is invalid; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


class InvalidInput(FedgeError):
    """The input cannot be given to the model."""


class InputShapeError(InvalidInput):
    """The input's shape does not match the model's input spec."""


class InputDtypeError(InvalidInput):
    """The input's dtype cannot be cast to the model's input dtype."""


class NonFiniteInput(InvalidInput):
    """The input holds NaN or infinity and the NaN policy rejects it."""


class ModelError(FedgeError):
    """A model directory cannot be used."""


class ModelNotFound(ModelError):
    """There is no manifest, or no artifact this device can run."""


class ManifestError(ModelError):
    """manifest.json is missing a field or holds a value of the wrong type."""


class ModelIntegrityError(ModelError):
    """A model file is missing, truncated, corrupted or does not match its hash."""


class BackendUnavailable(FedgeError):
    """The inference package or execution provider needed is not installed."""


class BackendError(FedgeError):
    """The inference engine failed while running a loaded model."""


class ExportError(FedgeError):
    """The export pipeline cannot produce a model directory."""


class AccuracyGateFailed(ExportError):
    """An int8 or pruned artifact lost more accuracy than the gate allows."""

    def __init__(self, artifact: str, accuracy: float, reference: float, max_drop_pt: float) -> None:
        self.artifact = artifact
        self.accuracy = accuracy
        self.reference = reference
        self.max_drop_pt = max_drop_pt
        drop = (reference - accuracy) * 100
        super().__init__(
            f"{artifact}: accuracy {accuracy:.4f} is {drop:.2f} points below the fp32 "
            f"reference {reference:.4f}; the gate allows {max_drop_pt:.2f}"
        )
