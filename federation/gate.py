"""The validation gate: a round's global model becomes a candidate version only when it beats the release."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ValidationGate"]


@dataclass
class ValidationGate:
    """Remembers the accuracy to beat; decisions only.

    ``release_accuracy`` is the validation accuracy of the current release (0 when there is
    none); a round's model passes when it is more than ``margin`` above it, and then becomes
    the one to beat.
    """

    release_accuracy: float = 0.0
    margin: float = 0.0

    def consider(self, accuracy: float) -> bool:
        """Whether a model of ``accuracy`` becomes a candidate; a candidate raises the bar."""
        if accuracy > self.release_accuracy + self.margin:
            self.release_accuracy = accuracy
            return True
        return False
