"""From parsed YAML to a validated `Manifest` and a list of issues people can act on.

pydantic's messages are written for programmers ("Input should be a valid integer", "Extra inputs
are not permitted"); here each error becomes a short sentence that names the value and, for an
unknown key or a misspelt choice, the closest valid word. Then the rules of `manifests.checks`
run over every part that was valid, so one run reports every problem of the file.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from manifests.checks import CheckContext, Issue, check_parts, did_you_mean
from manifests.errors import join_key
from manifests.schema import Asset, AssetFields, Defaults, Manifest


def validate_document(data: Any, ctx: CheckContext) -> tuple[Manifest | None, list[Issue]]:
    """Validate parsed YAML. Returns the manifest (None when anything is wrong) and every issue."""
    if not isinstance(data, dict):
        return None, [Issue("", f"a manifest is a mapping (version:, team:, project:, assets:), "
                                f"not {_describe(data)}")]
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        issues = pydantic_issues(exc, Manifest)
        defaults, assets, invalid = valid_parts(data)
        return None, issues + check_parts(defaults, assets, ctx, complete=False, invalid=invalid)
    issues = check_parts(manifest.defaults, list(enumerate(manifest.assets)), ctx, complete=True)
    return (None if issues else manifest), issues


def valid_parts(data: dict) -> tuple[Defaults | None, list[tuple[int, Asset]], set[str]]:
    """What of an invalid manifest can still be checked: the valid settings of defaults and of each asset.

    Each setting is validated on its own; the valid ones make up a partial `Defaults` / `Asset`
    (built without re-validation), so that a bad size does not hide a missing control map two
    lines below. Returns those parts and the key paths of settings that were given but invalid,
    which the cross-value rules must not mistake for absent ones (a mapping's own path when it has
    an unknown key, which may be a misspelt setting).
    """
    invalid: set[str] = set()
    raw_defaults = data.get("defaults")
    defaults = _partial(Defaults, {} if raw_defaults is None else raw_defaults, "defaults", invalid)
    if "defaults" not in data and any(key not in Manifest.model_fields for key in data):
        invalid.add("defaults")  # `defalts:` was probably meant: do not call its settings missing
    assets = []
    raw_assets = data.get("assets")
    for index, raw in enumerate(raw_assets if isinstance(raw_assets, list) else []):
        asset = _partial(Asset, raw, f"assets[{index}]", invalid)
        if asset is not None:
            assets.append((index, asset))
    return defaults, assets, invalid


def _partial(model: type[AssetFields], raw: Any, prefix: str, invalid: set[str]) -> Any:
    if not isinstance(raw, dict):
        invalid.add(prefix)
        return None
    good: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in model.model_fields:
            invalid.add(prefix)  # a misspelt key may be a setting that would otherwise be "missing"
            continue
        probe = {"id": "probe", "prompt": "probe", name: value} if model is Asset else {name: value}
        try:
            good[name] = getattr(model.model_validate(probe), name)
        except ValidationError:
            invalid.add(f"{prefix}.{name}")
    if model is Asset:
        good.setdefault("id", "")  # an invalid id takes no part in the duplicate-id rule
        good.setdefault("prompt", "")
    return model.model_construct(**good)


def pydantic_issues(exc: ValidationError, root: type[BaseModel]) -> list[Issue]:
    """One Issue per pydantic error, with a key path like `assets[2].sizes[0]` and a plain sentence."""
    issues = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        key_path = ""
        for part in loc:
            key_path = join_key(key_path, part)
        issues.append(Issue(key_path, _message(error, loc, root)))
    return issues


def _message(error: dict, loc: tuple, root: type[BaseModel]) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(loc, root)
    if kind == "missing":
        return f"required key {loc[-1]!r} is missing"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    if kind == "literal_error" and loc == ("version",):
        return f"version {_show(value)} is not supported; this linstudio reads version 1"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'|(\w+)", ctx.get("expected", ""))
        words = [a or b for a, b in choices if (a or b) != "or"]
        return f"{_show(value)} is not one of {', '.join(words)}{did_you_mean(value, words)}"
    simple = {
        "string_type": "expected text, got {v}" + ("; quote it" if isinstance(value, (int, float, bool)) else ""),
        "int_type": "expected a whole number, got {v}",
        "int_from_float": "expected a whole number, got {v}",
        "float_type": "expected a number, got {v}",
        "bool_type": "expected true or false, got {v}",
        "list_type": "expected a list, got {v}",
        "model_type": "expected a mapping (key: value lines), got {v}",
        "dict_type": "expected a mapping (key: value lines), got {v}",
        "model_attributes_type": "expected a mapping (key: value lines), got {v}",
        "finite_number": "must be a finite number, got {v}",
        "greater_than_equal": "must be at least {ge}, got {v}",
        "greater_than": "must be more than {gt}, got {v}",
        "less_than_equal": "must be at most {le}, got {v}",
        "less_than": "must be less than {lt}, got {v}",
        "string_too_long": "is longer than {max_length} characters",
        "string_too_short": "must not be empty",
        "too_long": "has more than {max_length} items",
    }
    if kind == "too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"needs at least {ctx.get('min_length')} items"
    if kind in simple:
        return simple[kind].format(v=_show(value), **{k: _num(v) for k, v in ctx.items()})
    return f"{error['msg']} (got {_show(value)})"


def _unknown_key(loc: tuple, root: type[BaseModel]) -> str:
    """`unknown key; did you mean 'defaults'?`, with the valid keys of the mapping it was found in."""
    key = loc[-1]
    model = _model_at(root, loc[:-1])
    names = list(model.model_fields) if model is not None else []
    hint = did_you_mean(key, names)
    if not hint and model is root and key in AssetFields.model_fields:
        hint = f"; {key!r} is an asset setting: put it under defaults: or an asset"
    if not hint and names:
        hint = f" (valid here: {', '.join(names)})"
    return f"unknown key{hint}"


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model that validates the mapping at `loc` (walking field annotations), or None."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = [a for a in typing.get_args(current) if a is not type(None)]
            current = args[0] if args else None
        elif isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            current = current.model_fields[part].annotation
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and Optional[...] down to the type that validates."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _num(value: Any) -> Any:
    return f"{value:g}" if isinstance(value, float) else value


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "empty"
    return f"a single value ({_show(value)})"


def _show(value: Any) -> str:
    """A value as the YAML author wrote it, briefly."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, float):
        return f"{value:g}"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
