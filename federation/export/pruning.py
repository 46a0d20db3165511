"""Global magnitude pruning of convolution and linear weights, then fine-tuning with the mask held."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = ["prune_magnitude", "sparsity"]


def _prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def prune_magnitude(
    model: nn.Module, amount: float, finetune: Callable[[nn.Module], object] | None = None
) -> nn.Module:
    """Return a copy of ``model`` with the ``amount`` smallest weights (globally, by |w|) set to zero.

    ``finetune`` trains the copy while the pruning masks are still attached, so
    the zeros stay zero; the masks are then folded into the weights.
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"sparsity must be within [0, 1), got {amount}")
    pruned = copy.deepcopy(model)
    params = _prunable(pruned)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    if finetune is not None:
        finetune(pruned)
    for module, name in params:
        prune.remove(module, name)
    return pruned.eval()


@torch.no_grad()
def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights in the model's convolution and linear layers."""
    total = zeros = 0
    for module, name in _prunable(model):
        weight = getattr(module, name)
        total += weight.numel()
        zeros += int((weight == 0).sum())
    return zeros / total if total else 0.0
