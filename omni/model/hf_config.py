"""Reading a config.json section into one of our config dataclasses, with every default written once, and
looking up a named preset.

A dataclass field's default is the only default: `hf_fields` returns just the fields whose Hugging Face key
is present in the section, so the dataclass fills in the rest. Values are converted to the field's
declared type (JSON writes 2 for 2.0 and lists for tuples).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from omni.model.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_C = TypeVar("_C", bound="DataclassInstance")

_CONVERT: dict[str, Callable[[Any], Any]] = {"int": int, "float": float, "str": str, "bool": bool}


def _convert(annotation: str, value: Any) -> Any:
    if annotation.startswith("tuple[tuple"):
        return tuple(tuple(int(x) for x in v) for v in value)
    if annotation.startswith("tuple"):
        return tuple(value)
    return _CONVERT.get(annotation, lambda v: v)(value)


def hf_fields(
    cls: type,
    section: Mapping[str, Any],
    names: Mapping[str, str | tuple[str, ...]],
    what: str,
    required: Collection[str] = (),
) -> dict[str, Any]:
    """Keyword arguments for `cls` from `section`: field -> the first of its HF keys that is present and not null.

    Fields in `required` raise a ConfigError naming the missing key (`what` names the section).
    """
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for name, keys in names.items():
        keys = (keys,) if isinstance(keys, str) else keys
        key = next((k for k in keys if section.get(k) is not None), None)
        if key is not None:
            out[name] = _convert(types[name], section[key])
        elif name in required:
            raise ConfigError(f"{what} is missing the field {keys[0]!r}")
    return out


def preset(presets: Mapping[str, _C], name: str, what: str) -> _C:
    """A copy of the preset `name` (callers may edit it); an unknown name is a ConfigError listing the known ones
    (`what` names the kind of config: "code2wav", "audio encoder")."""
    try:
        return dataclasses.replace(presets[name])
    except KeyError:
        raise ConfigError(f"unknown {what} preset {name!r}; known: {', '.join(sorted(presets))}") from None
