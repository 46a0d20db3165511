"""Input checks against the manifest's spec: shape, dtype and NaN policy. No I/O."""

from __future__ import annotations

from typing import Literal

import numpy as np

from sdk.errors import InputDtypeError, InputShapeError, NonFiniteInput
from sdk.manifest import TensorSpec

__all__ = ["InputPolicy"]


class InputPolicy:
    """Turns what a caller passes into a contiguous batch the model accepts, or raises.

    * shape: one sample ``spec.sample_shape`` or a batch ``(N, *sample_shape)``, N <= ``max_batch_size``;
    * dtype: the spec's dtype as is; other numeric dtypes are cast when the cast stays
      within the same kind (``float64`` to ``float32``, ints to floats) unless ``strict_dtype``;
    * NaN and infinity: rejected under ``nan_policy="reject"`` (the default), since a
      model answers them with confident garbage; ``"allow"`` passes them through.
    """

    def __init__(
        self,
        spec: TensorSpec,
        *,
        nan_policy: Literal["reject", "allow"] = "reject",
        strict_dtype: bool = False,
        max_batch_size: int = 256,
    ) -> None:
        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        self.sample_shape = spec.sample_shape
        self._check_finite = nan_policy == "reject" and self.dtype.kind == "f"
        self._strict = strict_dtype
        self._max_batch = max_batch_size

    def prepare(self, x: object) -> tuple[np.ndarray, bool]:
        """Return ``(batch, single)``; ``single`` tells whether the caller passed one sample."""
        arr = x if isinstance(x, np.ndarray) else self._as_array(x)
        if arr.dtype != self.dtype:
            arr = self._cast(arr)
        shape = arr.shape
        if shape == self.sample_shape:
            arr, single = arr[None], True
        elif len(shape) == len(self.sample_shape) + 1 and shape[1:] == self.sample_shape:
            single = False
            if not 1 <= shape[0] <= self._max_batch:
                raise InputShapeError(f"batch size {shape[0]} is outside 1..{self._max_batch}")
        else:
            batch_shape = ", ".join(["N", *map(str, self.sample_shape)])
            raise InputShapeError(
                f"expected one sample of shape {self.sample_shape} or a batch ({batch_shape}), got {shape}"
            )
        # Not the cheaper-looking ``isfinite(arr.sum())``: a sum of finite values near the dtype's limit overflows
        # (schemathesis found 1.4e38 * 64), and the overflow warning is an error wherever warnings are.
        if self._check_finite and not np.isfinite(arr).all():
            bad = int(arr.size - np.isfinite(arr).sum())
            raise NonFiniteInput(f"input holds {bad} NaN or infinite values (nan_policy='reject')")
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        return arr, single

    def _as_array(self, x: object) -> np.ndarray:
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise InputShapeError(f"input is ragged or not an array: {exc}") from exc
        if arr.dtype == object:
            raise InputDtypeError("input is ragged or holds Python objects, not numbers")
        return arr

    def _cast(self, arr: np.ndarray) -> np.ndarray:
        ok = arr.dtype.kind in "biuf" and arr.dtype.kind != "b"
        ok = ok and (np.can_cast(arr.dtype, self.dtype, "same_kind") or np.can_cast(arr.dtype, self.dtype, "safe"))
        if self._strict or not ok:
            rule = "exactly" if self._strict else "or a numeric dtype castable within its kind"
            raise InputDtypeError(f"expected dtype {self.dtype} ({rule}), got {arr.dtype}")
        # Values beyond the target's range become inf here and are caught by the NaN policy.
        with np.errstate(over="ignore", invalid="ignore"):
            return arr.astype(self.dtype)
