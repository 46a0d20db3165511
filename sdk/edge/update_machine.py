"""The over-the-air update as a state machine without I/O: what happened decides what comes next.

```
idle -> checking -> downloading -> verifying -> staged -> swapping -> watching -> committed
           |             |              |           |          |            |
           +-------------+--------------+-----------+----> rejected        +--> rolled-back
           +---> idle (up to date; or the repository or the device failed: retry with backoff)
```
Order rules, enforced by :meth:`UpdateMachine.advance` (a wrong order is a bug of the driver,
raised as ``RuntimeError``):

* nothing is downloaded before the signed metadata is refreshed (``checking``);
* nothing is staged before every file verified against its signed length and hash;
* nothing is swapped in before the staged model loaded and passed its probe through the live input path;
* after the swap, only ``committed`` or ``rolled-back`` end the check (``rejected`` when there is
  no previous version to go back to).

What to install is :func:`choose_release`: the newest admitted release above the installed one;
a lower version only when the signed index says the installed release was aborted and recalls
it there (a recall), never otherwise.

How a failure ends a check depends on whose fault it is, never on which library raised it
(:mod:`sdk.edge.update_errors` maps foreign errors first):

* the signed release itself is bad (:class:`ReleaseUnusable`, :class:`SmokeTestFailed`, any
  :class:`ModelError`, a failed health window): ``rejected`` or ``rolled-back``, and the version
  is remembered, so that it is not taken again until a newer release or an operator's ``forget``
  (a release this device's privacy policy refuses, :class:`PolicyRefused`, also until the policy changes);
* bytes or metadata that do not verify (:class:`UpdateRejected`): ``rejected``, retried with backoff
  (a mirror may serve a corrupt copy; the signed release may still be good);
* the repository or the device failed (unreachable, disk full, out of memory, an engine that cannot
  load here): back to ``idle``, retried with backoff and jitter; the version is not blamed.

:class:`sdk.edge.updater.ModelUpdater` drives it: it does the TUF, HTTP and file work and reports
each step back.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

from sdk.backoff import Backoff
from sdk.errors import (
    BackendUnavailable,
    DeviceResourceError,
    ModelError,
    PolicyRefused,
    ReleaseUnusable,
    RepositoryUnreachable,
    SmokeTestFailed,
    UpdateRejected,
)

__all__ = [
    "Choice",
    "Decision",
    "HealthRules",
    "Outcome",
    "Recall",
    "Release",
    "State",
    "UpdateMachine",
    "Verdict",
    "blames_release",
    "choose_release",
]

Outcome = Literal["up-to-date", "installed", "rejected", "rolled-back", "unreachable", "failed"]


class State(str, enum.Enum):
    """Where one check stands."""

    IDLE = "idle"
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    SWAPPING = "swapping"
    WATCHING = "watching"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled-back"
    REJECTED = "rejected"


_BEFORE_SWAP = (State.CHECKING, State.DOWNLOADING, State.VERIFYING, State.STAGED)
_AFTER_SWAP = (State.SWAPPING, State.WATCHING)
_NEXT: dict[State, frozenset[State]] = {
    State.IDLE: frozenset({State.CHECKING}),
    State.CHECKING: frozenset({State.DOWNLOADING, State.REJECTED, State.IDLE}),
    State.DOWNLOADING: frozenset({State.VERIFYING, State.REJECTED, State.IDLE}),
    State.VERIFYING: frozenset({State.STAGED, State.REJECTED, State.IDLE}),
    State.STAGED: frozenset({State.SWAPPING, State.REJECTED, State.IDLE}),
    State.SWAPPING: frozenset({State.WATCHING, State.COMMITTED, State.ROLLED_BACK, State.REJECTED}),
    State.WATCHING: frozenset({State.COMMITTED, State.ROLLED_BACK, State.REJECTED}),
    State.COMMITTED: frozenset({State.IDLE}),
    State.ROLLED_BACK: frozenset({State.IDLE}),
    State.REJECTED: frozenset({State.IDLE}),
}


@dataclass(frozen=True, kw_only=True)
class Recall:
    """The signed instruction of an aborted release: go back to version ``to`` (None: there is none), and why."""

    to: int | None
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class Release:
    """One entry of the signed release index."""

    version: int
    channel: str
    rollout: int
    state: str
    targets: tuple[str, ...]
    recall: Recall | None = None

    @classmethod
    def from_index(cls, entry: Mapping[str, Any]) -> Release | None:
        """Parse one index entry; None for a malformed one (it is skipped, not fatal)."""
        try:
            recall = entry.get("recall")
            return cls(
                version=int(entry["version"]),
                channel=str(entry["channel"]),
                rollout=int(entry["rollout"]),
                state=str(entry["state"]),
                targets=tuple(str(t) for t in entry["targets"]),
                recall=None
                if recall is None
                else Recall(to=_version_or_none(recall["to"]), reason=str(recall["reason"])),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def _version_or_none(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"a recall target must be a version number, got {value!r}")
    return value


@dataclass(frozen=True)
class Choice:
    """What a check installs; for a recall, the aborted release it leaves, and what stops it (nothing installs)."""

    release: Release
    recalled: Release | None = None
    problem: str | None = None

    @property
    def reason(self) -> str:
        """Why the installed release was recalled ("" for an upgrade)."""
        recall = self.recalled.recall if self.recalled is not None else None
        return recall.reason if recall is not None else ""


def choose_release(
    releases: Iterable[Release],
    *,
    installed: int | None,
    target: str,
    channel: str,
    admitted: Callable[[Release], bool],
    refused: Collection[int] = (),
) -> Choice | None:
    """The newest active release of ``channel`` newer than ``installed`` that carries ``target``; else a recall.

    A newer release without this device's target, or one this device refused before, is skipped
    for an older one that fits; ``admitted`` is the staged-rollout test. Without a newer one, a
    lower version is chosen only when the installed release is aborted and its signed recall
    names it (and this device did not refuse it): every device on the aborted release goes back,
    whatever its channel or rollout bucket. A recall target without this device's target is
    chosen with a ``problem``: the device keeps what it runs and reports why.
    """
    releases = list(releases)
    eligible = [
        r
        for r in releases
        if r.state == "active"
        and r.channel == channel
        and r.version > (installed or 0)
        and target in r.targets
        and r.version not in refused
        and admitted(r)
    ]
    if eligible:
        return Choice(max(eligible, key=lambda r: r.version))
    return _recall(releases, installed=installed, target=target, refused=refused)


def _recall(releases: list[Release], *, installed: int | None, target: str, refused: Collection[int]) -> Choice | None:
    """Where the signed recall of the installed release sends this device; None when it is not recalled."""
    by_version = {r.version: r for r in releases}
    current = by_version.get(installed) if installed is not None else None
    if current is None or current.state != "aborted" or current.recall is None or current.recall.to is None:
        return None
    back = by_version.get(current.recall.to)
    if back is None or back.state == "aborted" or back.version >= current.version or back.version in refused:
        return None
    if target not in back.targets:
        problem = f"v{back.version}, where the recall of v{current.version} leads, has no {target} artifact"
        return Choice(back, recalled=current, problem=problem)
    return Choice(back, recalled=current)


def blames_release(error: BaseException) -> bool:
    """Whether ``error`` says the release is at fault (False: the repository or this device is)."""
    return not isinstance(error, (RepositoryUnreachable, DeviceResourceError, BackendUnavailable))


@dataclass(frozen=True, kw_only=True)
class HealthRules:
    """The health window after a swap: probes spread over it, and limits on failed live calls."""

    window_s: float = 10.0
    probes: int = 3
    max_error_rate: float = 0.05
    max_error_run: int = 3

    def probe_due_s(self, probes_done: int) -> float:
        """Seconds into the window when probe number ``probes_done`` (from 0) is due."""
        return probes_done * self.window_s / self.probes


class Decision(NamedTuple):
    """What the health window says now: keep ``watch``-ing, ``commit``, or ``roll-back`` (with a reason)."""

    action: Literal["watch", "commit", "roll-back"]
    reason: str = ""


@dataclass(frozen=True)
class Verdict:
    """How a check ended: its outcome, the version concerned, why, whether to remember it, when to check again."""

    outcome: Outcome
    version: int | None
    detail: str
    retry_after_s: float
    remember: bool = False
    failures: int = 0
    by_policy: bool = False  # refused by this device's privacy policy: looked at again when the policy changes
    recalled: int | None = None  # the aborted version this check was leaving (a recall); refused once it is left


class UpdateMachine:
    """The states of one check and their transitions; no I/O, no clock of its own."""

    def __init__(self, *, backoff: Backoff, health: HealthRules, failures: int, draw: Callable[[], float]) -> None:
        """Start idle; ``failures`` counts failed checks before this one (for the backoff), ``draw`` gives jitter."""
        self.backoff = backoff
        self.health = health
        self.failures = failures
        self._draw = draw
        self.state = State.IDLE
        self.version: int | None = None
        self.recalled: Release | None = None
        self.history: list[State] = [State.IDLE]

    def advance(self, state: State) -> None:
        """Move to ``state``; a transition the order rules forbid is a driver bug.

        Raises:
            RuntimeError: ``state`` may not follow the current state.
        """
        if state not in _NEXT[self.state]:
            raise RuntimeError(f"an update may not go from {self.state.value} to {state.value}")
        self.state = state
        self.history.append(state)

    def chosen(self, release: Release | None, *, recalled: Release | None = None) -> Verdict | None:
        """The release picked from the index (leaving the aborted ``recalled``); a verdict when there is none."""
        if release is None:
            return self._end(State.IDLE, "up-to-date", "", failed=False)
        self.version = release.version
        self.recalled = recalled
        self.advance(State.DOWNLOADING)
        return None

    def watch(
        self, *, elapsed_s: float, calls: int, errors: int, error_run: int, probes_done: int, probe_problem: str | None
    ) -> Decision:
        """Judge the new model so far: a failed probe or a run of failed live calls ends the window at once."""
        rules = self.health
        if probe_problem is not None:
            return Decision("roll-back", f"probe failed: {probe_problem}")
        if error_run >= rules.max_error_run:
            return Decision("roll-back", f"{error_run} live calls failed in a row")
        if elapsed_s < rules.window_s or probes_done < rules.probes:
            return Decision("watch")
        if calls and errors / calls > rules.max_error_rate:
            return Decision("roll-back", f"{errors} of {calls} calls failed (more than {rules.max_error_rate:.0%})")
        return Decision("commit")

    def committed(self) -> Verdict:
        """The new version serves and passed its window (or there is no runtime to watch)."""
        detail = ""
        if self.recalled is not None:
            reason = self.recalled.recall.reason if self.recalled.recall is not None else ""
            detail = f"v{self.recalled.version} was recalled" + (f": {reason}" if reason else "")
        return self._end(State.COMMITTED, "installed", detail, failed=False)

    def rolled_back(self, reason: str, *, possible: bool, blame_release: bool = True) -> Verdict:
        """The new version failed after the swap; ``possible`` says whether a previous version was there."""
        detail = f"v{self.version} failed its health window: {reason}"
        remember = blame_release
        if not possible:  # nothing to go back to: the new version stays, but it is not trusted again
            return self._end(State.REJECTED, "rejected", detail, failed=not blame_release, remember=remember)
        return self._end(State.ROLLED_BACK, "rolled-back", detail, failed=not blame_release, remember=remember)

    def failed(self, error: BaseException) -> Verdict:
        """End the check on ``error`` (already one of ours, see :mod:`sdk.edge.update_errors`)."""
        detail = f"{type(error).__name__}: {error}"
        environment = not blames_release(error)
        if self.state in _AFTER_SWAP:
            return self.rolled_back(detail, possible=True, blame_release=not environment)
        if isinstance(error, RepositoryUnreachable):
            return self._end(State.IDLE, "unreachable", detail, failed=True)
        if environment:
            return self._end(State.IDLE, "failed", detail, failed=True)
        if isinstance(error, (ReleaseUnusable, SmokeTestFailed, ModelError)):
            verdict = self._end(State.REJECTED, "rejected", detail, failed=False, remember=self.version is not None)
            return replace(verdict, by_policy=isinstance(error, PolicyRefused))
        if isinstance(error, UpdateRejected):
            return self._end(State.REJECTED, "rejected", detail, failed=True)
        return self._end(State.IDLE, "failed", detail, failed=True)

    def _end(self, state: State, outcome: Outcome, detail: str, *, failed: bool, remember: bool = False) -> Verdict:
        if self.state is not state:
            self.advance(state)
        if state is not State.IDLE:
            self.advance(State.IDLE)
        self.failures = self.failures + 1 if failed else 0
        delay = self.backoff.delay(self.failures, self._draw())
        remember = remember and self.version is not None
        recalled = self.recalled.version if self.recalled is not None else None
        return Verdict(outcome, self.version, detail, delay, remember, self.failures, recalled=recalled)
