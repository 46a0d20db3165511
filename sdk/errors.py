"""Every error Fedge raises on purpose, in one tree.

```
FedgeError
├── ConfigError                 a config file, table, key or value is wrong
├── InvalidInput                an input the model cannot take
│   ├── InputShapeError         shape does not match the manifest
│   ├── InputDtypeError         dtype cannot be cast to the manifest's dtype
│   ├── NonFiniteInput          NaN or infinity under the "reject" policy
│   └── InputOutOfRange         values far outside the range seen in training, under range_policy "reject"
├── ModelError                  a model directory cannot be used
│   ├── ModelNotFound           no manifest, or no artifact for this device
│   ├── ManifestError           manifest.json is malformed
│   ├── ModelIntegrityError     a file is missing, truncated, corrupted or tampered with
│   └── ModelSignatureMismatch  the engine's input or output differs from the manifest
├── BackendUnavailable          the runtime package or execution provider is not installed
│   └── EngineLoadFailed        the engine is there but cannot load the model now (provider, memory)
├── BackendError                the inference engine failed while running a loaded model
├── ExportError                 the export pipeline cannot produce a model directory
│   └── AccuracyGateFailed      an int8 or pruned artifact lost too much accuracy
├── WireFormatError             a payload is malformed, truncated or of the wrong version
│   └── PayloadTooLarge         a payload is over the size bound (checked before parsing)
├── CloudError                  the cloud could not give an answer
│   ├── CloudUnavailable        broker unreachable, circuit open, or no reply
│   ├── DeadlineExceeded        the request's deadline passed before an answer
│   ├── Overloaded              the cloud shed the request (queue full)
│   ├── UnknownModel            the cloud serves no model of that name
│   └── RemoteError             the cloud answered with an error of another kind
├── Unauthorized                a request carried no valid API key
├── BrokerUnavailable           the Mosquitto binary is missing or the broker did not start
├── RegistryError               the model registry refused an operation
│   ├── NotFound                no such model, version, release or device
│   ├── Conflict                the operation contradicts the registry's state
│   ├── StatusRejected          a device's status report is malformed, oversized or names another device
│   └── RegistryRefused         the registry service answered with another error, or could not be reached
├── UpdateError                 an over-the-air update did not install
│   ├── RepositoryUnreachable   the release repository cannot be reached or hung up mid-transfer
│   ├── DeviceResourceError     the device ran out of disk or memory, or could not write a file
│   ├── UpdateRejected          metadata or artifact failed verification (TUF, hash, size)
│   │   ├── ReleaseUnusable     the signed release itself cannot serve this device
│   │   │   ├── PolicyRefused   its signed lineage breaks the device's privacy policy (max_epsilon, min_clients)
│   │   │   └── RecallImpossible  a recall's target release has no artifact this device runs
│   │   └── PatchUnusable       a binary patch does not rebuild the signed artifact (the full file is fetched)
│   └── SmokeTestFailed         the new model did not load or failed its probe
├── PrivacyBudgetExhausted      the differential-privacy budget is spent
├── GateRefused                 a round's model is at chance level, below the floor, or below the release
└── ReleaseRefused              a candidate lacks an artifact kind the fleet runs, or one is below the release's
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
    "BrokerUnavailable",
    "CloudError",
    "CloudUnavailable",
    "ConfigError",
    "Conflict",
    "DeadlineExceeded",
    "DeviceResourceError",
    "EngineLoadFailed",
    "ExportError",
    "FedgeError",
    "GateRefused",
    "InputDtypeError",
    "InputOutOfRange",
    "InputShapeError",
    "InvalidInput",
    "ManifestError",
    "ModelError",
    "ModelIntegrityError",
    "ModelNotFound",
    "ModelSignatureMismatch",
    "NonFiniteInput",
    "NotFound",
    "Overloaded",
    "PatchUnusable",
    "PayloadTooLarge",
    "PolicyRefused",
    "PrivacyBudgetExhausted",
    "RecallImpossible",
    "RegistryError",
    "RegistryRefused",
    "ReleaseRefused",
    "ReleaseUnusable",
    "RemoteError",
    "RepositoryUnreachable",
    "SmokeTestFailed",
    "StatusRejected",
    "Unauthorized",
    "UnknownModel",
    "UpdateError",
    "UpdateRejected",
    "WireFormatError",
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


class InputOutOfRange(InvalidInput):
    """Rows of the input lie far outside the value range the model was trained on (raw, unscaled data)."""


class ModelError(FedgeError):
    """A model directory cannot be used."""


class ModelNotFound(ModelError):
    """There is no manifest, or no artifact this device can run."""


class ManifestError(ModelError):
    """manifest.json is missing a field or holds a value of the wrong type."""


class ModelIntegrityError(ModelError):
    """A model file is missing, truncated, corrupted or does not match its hash."""


class ModelSignatureMismatch(ModelError):
    """The engine's input or output (shape, dtype) differs from what the manifest promises."""


class BackendUnavailable(FedgeError):
    """The inference package or execution provider needed is not installed."""


class EngineLoadFailed(BackendUnavailable):
    """The engine is installed but cannot load the model now (a provider failed, memory ran out): not a bad file."""


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


class WireFormatError(FedgeError):
    """A payload is malformed, truncated or of an unsupported version."""


class PayloadTooLarge(WireFormatError):
    """A payload is larger than the configured bound; it was not parsed."""


class CloudError(FedgeError):
    """The cloud could not give an answer."""


class CloudUnavailable(CloudError):
    """The broker is unreachable, the circuit is open, or no reply came."""


class DeadlineExceeded(CloudError):
    """The request's deadline passed before an answer."""


class Overloaded(CloudError):
    """The cloud shed the request because its queue is full."""


class UnknownModel(CloudError):
    """The cloud serves no model of that name."""


class RemoteError(CloudError):
    """The cloud answered with an error; ``code`` says which."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


class Unauthorized(FedgeError):
    """A request carried no valid API key."""


class BrokerUnavailable(FedgeError):
    """The Mosquitto binary is missing or the broker did not start."""


class RegistryError(FedgeError):
    """The model registry refused an operation."""


class NotFound(RegistryError):
    """No such model, version, release or device."""


class Conflict(RegistryError):
    """The operation contradicts the registry's current state."""


class StatusRejected(RegistryError):
    """A device's status report is malformed, oversized, or names a device other than its topic's."""


class RegistryRefused(RegistryError):
    """The registry service answered with an error other than not-found or conflict, or could not be reached."""


class UpdateError(FedgeError):
    """An over-the-air update did not install; the device keeps its current model."""


class RepositoryUnreachable(UpdateError):
    """The release repository cannot be reached, or the connection broke mid-transfer."""


class DeviceResourceError(UpdateError):
    """The device ran out of disk or memory, or could not write a file, while updating."""


class UpdateRejected(UpdateError):
    """Release metadata or an artifact failed verification."""


class ReleaseUnusable(UpdateRejected):
    """The signed release itself cannot serve this device (its manifest contradicts it, a file is missing)."""


class PolicyRefused(ReleaseUnusable):
    """The release's signed lineage breaks this device's privacy policy (too much epsilon, too few clients)."""


class RecallImpossible(ReleaseUnusable):
    """The signed recall of the installed release names a version without an artifact for this device's target."""


class PatchUnusable(UpdateRejected):
    """A binary patch does not rebuild the signed artifact; the device fetches the full file instead."""


class SmokeTestFailed(UpdateError):
    """The downloaded model did not load or did not reproduce its probe output."""


class PrivacyBudgetExhausted(FedgeError):
    """The differential-privacy budget (epsilon) is spent; no further round may run."""


class GateRefused(FedgeError):
    """A round's model is at chance level, below the configured floor, or below the current release."""


class ReleaseRefused(FedgeError):
    """A candidate lacks an artifact kind the fleet runs, or an artifact is below the current release's accuracy."""
