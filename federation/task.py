"""The reference task: scikit-learn's bundled 8x8 digits, a small CNN, and how to split them.

Nothing is downloaded: ``load_digits`` ships inside the scikit-learn wheel
(1,797 images, 10 classes). Pixels 0..16 are scaled to 0..1 (``PREPROCESSING``) and shaped
``(N, 1, 8, 8)`` float32, which is the input spec every exported digits model has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sdk.manifest import Preprocessing

__all__ = [
    "DEVICE_WIDTH",
    "INPUT_SHAPE",
    "LABELS",
    "MODEL_NAME",
    "PREPROCESSING",
    "CloudCNN",
    "DigitsCNN",
    "Split",
    "accuracy",
    "batches",
    "dirichlet_partition",
    "evaluate",
    "get_weights",
    "load_split",
    "predict_logits",
    "set_seed",
    "set_weights",
    "train",
]

MODEL_NAME = "digits"
INPUT_SHAPE = (1, 8, 8)
LABELS = tuple(str(d) for d in range(10))
#: Width of the device tier's DigitsCNN (about 9k parameters, what a Raspberry Pi runs); the default 16 is federation's.
DEVICE_WIDTH = 4
#: Raw pixels (0..16) to model inputs (0..1); the export records it in the manifest.
PREPROCESSING = Preprocessing(scale=1 / 16, offset=0.0)


@dataclass(frozen=True)
class Split:
    """Deterministic train / validation / test arrays of the digits set, and how raw inputs became ``x``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    preprocessing: Preprocessing = PREPROCESSING


def load_split(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2) -> Split:
    """Shuffle the digits set once with ``seed`` and cut it into train, validation and test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = PREPROCESSING.apply(digits.images.astype(np.float32))[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    n_test = round(len(y) * test_fraction)
    n_val = round(len(y) * val_fraction)
    return Split(
        x_train=x[n_test + n_val :],
        y_train=y[n_test + n_val :],
        x_val=x[n_test : n_test + n_val],
        y_val=y[n_test : n_test + n_val],
        x_test=x[:n_test],
        y_test=y[:n_test],
    )


def dirichlet_partition(labels: np.ndarray, num_clients: int, alpha: float, seed: int = 0) -> list[np.ndarray]:
    """Split sample indices over clients with per-class Dirichlet(alpha) shares (non-IID).

    Small ``alpha`` gives each client few classes; large ``alpha`` tends to IID.
    Every client gets at least one sample.
    """
    if num_clients < 1 or alpha <= 0:
        raise ValueError("num_clients must be >= 1 and alpha > 0")
    if len(labels) < num_clients:
        raise ValueError(f"{len(labels)} samples cannot feed {num_clients} clients")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for client, chunk in enumerate(np.split(idx, cuts)):
            parts[client].extend(chunk.tolist())
    # A client with no data cannot train; give it one sample from the largest client.
    for client in range(num_clients):
        if not parts[client]:
            donor = max(range(num_clients), key=lambda c: len(parts[c]))
            parts[client].append(parts[donor].pop())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions and a linear head: about 25k parameters, ~98% on digits."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of ``(N, 1, 8, 8)`` images."""
        return self.head(self.features(x))


class CloudCNN(nn.Module):
    """The cloud tier: three 3x3 convolutions with batch norm, a dropout head; about 62k parameters, ~99% on digits."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *conv(1, width), *conv(width, width), nn.MaxPool2d(2), *conv(width, 2 * width), nn.MaxPool2d(2)
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(2 * width * 2 * 2, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of ``(N, 1, 8, 8)`` images."""
        return self.head(self.features(x))


def set_seed(seed: int) -> None:
    """Seed torch and make its CPU kernels deterministic."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator | None = None) -> Iterator:
    """Yield ``(x, y)`` torch batches, shuffled when ``rng`` is given."""
    order = rng.permutation(len(y)) if rng is not None else np.arange(len(y))
    for start in range(0, len(y), batch_size):
        sel = order[start : start + batch_size]
        yield torch.from_numpy(x[sel]), torch.from_numpy(y[sel])


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 10,
    lr: float = 0.01,
    batch_size: int = 32,
    seed: int = 0,
    proximal_mu: float = 0.0,
    teacher: nn.Module | None = None,
    distill_temperature: float = 4.0,
    distill_weight: float = 0.5,
    on_epoch: Callable[[int, float], None] | None = None,
) -> float:
    """Train with Adam; return the last epoch's mean loss.

    ``proximal_mu > 0`` adds FedProx's ``mu/2 * ||w - w0||^2`` towards the starting weights. A ``teacher``
    (in eval mode) distills into the model (Hinton et al., 2015): the loss becomes ``(1 - distill_weight)``
    times the cross-entropy plus ``distill_weight * T^2`` times the KL divergence from the teacher's
    ``softmax(logits / T)``, ``T = distill_temperature``.
    """
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    mean_loss = float("nan")
    for epoch in range(epochs):
        total, count = 0.0, 0
        for xb, yb in batches(x, y, batch_size, rng):
            optimizer.zero_grad()
            logits = model(xb)
            loss = loss_fn(logits, yb)
            if teacher is not None:
                distilled = _distillation(logits, teacher, xb, distill_temperature)
                loss = (1 - distill_weight) * loss + distill_weight * distilled
            if anchor:
                loss = loss + proximal_mu / 2 * sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
            loss.backward()
            optimizer.step()
            total += loss.item() * len(yb)
            count += len(yb)
        mean_loss = total / max(count, 1)
        if on_epoch is not None:
            on_epoch(epoch, mean_loss)
    return mean_loss


def _distillation(logits: torch.Tensor, teacher: nn.Module, x: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2`` times the KL divergence of the model's ``softmax(logits / T)`` from the teacher's on ``x``."""
    with torch.no_grad():
        target = torch.softmax(teacher(x) / temperature, dim=1)
    log_probs = torch.log_softmax(logits / temperature, dim=1)
    return nn.functional.kl_div(log_probs, target, reduction="batchmean") * temperature**2


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits of ``model`` for every row of ``x``."""
    model.eval()
    return np.concatenate(
        [model(torch.from_numpy(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
    )


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose arg-max is the label."""
    return float((logits.argmax(axis=1) == y).mean())


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Return ``(loss, accuracy)`` of ``model`` on ``(x, y)``."""
    logits = predict_logits(model, x)
    loss = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)))
    return loss, accuracy(logits, y)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's parameters as float32 arrays, in ``state_dict`` order (what Flower sends)."""
    return [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load arrays from :func:`get_weights` order; raise ValueError when a shape does not match."""
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"expected {len(state)} arrays, got {len(weights)}")
    new = {}
    for (name, current), array in zip(state.items(), weights, strict=True):
        if tuple(array.shape) != tuple(current.shape):
            raise ValueError(f"{name}: expected shape {tuple(current.shape)}, got {tuple(array.shape)}")
        new[name] = torch.from_numpy(np.asarray(array, dtype=np.float32).copy())
    model.load_state_dict(new)
