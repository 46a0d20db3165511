"""Typed configuration: one TOML file with a table per role, overridable from the environment.

```toml
[edge]
num_threads = 2
providers = ["cuda", "cpu"]
```

``FEDGE_EDGE__NUM_THREADS=4`` overrides ``edge.num_threads``. Every table maps onto a
keyword-only dataclass; an unknown key, a value of the wrong type or out of range
raises :class:`~sdk.errors.ConfigError` naming the key (``edge.num_threads``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from sdk.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6, Ubuntu 22.04): tomli is tomllib's twin, a dependency there
    import tomli as tomllib

__all__ = ["ENV_PREFIX", "check", "from_mapping", "load_section", "tomllib"]

ENV_PREFIX = "FEDGE_"

T = TypeVar("T")


def check(condition: bool, key: str, problem: str) -> None:
    """Raise ConfigError for ``key`` unless ``condition`` holds; for ``__post_init__`` checks."""
    if not condition:
        raise ConfigError(key, problem)


def from_mapping(cls: type[T], values: Mapping[str, Any], *, section: str) -> T:
    """Build the dataclass ``cls`` from ``values``, naming ``section.key`` in any error."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{section}.{key}", f"unknown key (known keys: {known})")
        kwargs[key] = _coerce(raw, hints[key], f"{section}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{section}.{exc.key}", exc.problem) from None


def load_section(
    cls: type[T],
    section: str,
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> T:
    """Load table ``[section]`` of the TOML file at ``path`` (if any), then environment overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_table(Path(path), section))
    env = os.environ if env is None else env
    prefix = f"{ENV_PREFIX}{section.upper()}__"
    for name, text in env.items():
        if name.startswith(prefix):
            values[name[len(prefix) :].lower()] = _EnvText(text)
    return from_mapping(cls, values, section=section)


class _EnvText(str):
    """A value that came from an environment variable and still needs parsing."""


def _read_table(path: Path, section: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), "config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(section, f"expected a table, got {type(table).__name__}")
    return table


def _coerce(raw: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_none = raw is None or (isinstance(raw, _EnvText) and raw.lower() in ("", "none"))
        if is_none and type(None) in args:
            return None
        problems = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(raw, arg, key)
            except ConfigError as exc:
                problems.append(exc.problem)
        raise ConfigError(key, "; ".join(problems))
    if origin is typing.Literal:
        value = str(raw) if isinstance(raw, _EnvText) else raw
        if value not in args:
            raise ConfigError(key, f"expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(raw, _EnvText):
            raw = [part.strip() for part in raw.split(",") if part.strip()]
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {type(raw).__name__}")
        item = args[0] if args else Any
        return tuple(_coerce(_EnvText(v) if isinstance(raw, _EnvText) else v, item, key) for v in raw)
    return _coerce_scalar(raw, hint, key)


def _coerce_scalar(raw: Any, hint: Any, key: str) -> Any:
    if hint is Any:
        return raw
    if isinstance(raw, _EnvText):
        return _parse_env(str(raw), hint, key)
    if hint is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if hint is Path and isinstance(raw, str):
        return Path(raw)
    if hint in (int, float) and isinstance(raw, bool):
        raise ConfigError(key, f"expected {hint.__name__}, got bool")
    if not isinstance(raw, hint):
        raise ConfigError(key, f"expected {hint.__name__}, got {type(raw).__name__} {raw!r}")
    return raw


def _parse_env(text: str, hint: Any, key: str) -> Any:
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(key, f"expected a boolean, got {text!r}")
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError:
            raise ConfigError(key, f"expected {hint.__name__}, got {text!r}") from None
    if hint is Path:
        return Path(text)
    if hint is str:
        return text
    raise ConfigError(key, f"cannot be set from the environment (type {hint})")
