"""Loading the settings: ``config.yaml`` plus environment, one line per problem.

Sources, later ones win:

1. the defaults below;
2. the YAML file given to :func:`load_settings` (``None``: no file, defaults only);
3. environment variables ``SR2FHIR_<SECTION>__<KEY>[__<SUBKEY>...]`` — e.g.
   ``SR2FHIR_DICOM__PORT=11113`` or ``SR2FHIR_FHIR__AUTH__CLIENT_SECRET=...``. Names are
   matched case-insensitively against the keys; values are read as YAML scalars
   (``true``, ``30``, ``null``, ``[A, B]``), except for text and secret keys, which take
   the value verbatim. Variables with no ``__`` after the prefix (``SR2FHIR_CONFIG``) are
   not overrides and are ignored.

Relative paths (``spool.directory``, ``fhir.outbox_directory``, ``fhir.tls.*``, ``dicom.tls.*``) written in
the file, and the defaults of path keys the file leaves out, are resolved against the
directory that holds the config file; relative paths from the environment against the
current directory. Paths in the :class:`Settings` that :func:`load_settings` returns are
absolute, so a later ``chdir`` changes nothing.

Problems are reported all at once as a :class:`ConfigError`, one line each::

    config.yaml: dicom.portt: unknown key (did you mean 'port'?)
    config.yaml: fhir.retry.max_backoff_s: max_backoff_s (5.0) must be greater than ...
    env SR2FHIR_DICOM__PORT: dicom.port: must be <= 65535

Values are never echoed in these lines, so secrets cannot leak through them.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from .settings import Settings

__all__ = ["ENV_PREFIX", "ConfigError", "load_settings"]

ENV_PREFIX = "SR2FHIR_"
"""Prefix of environment overrides; sections and keys below it are joined by ``__``."""

_ENV_DELIMITER = "__"


class ConfigError(Exception):
    """The configuration cannot be used. ``problems`` holds one line per problem, each
    ``"<source>: <dotted.key.path>: <what is wrong>"``; ``str()`` joins them with newlines."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__(self.problems)  # args round-trip through pickle (worker processes)

    def __str__(self) -> str:
        return "\n".join(self.problems)


def load_settings(path: Path | None, *, environ: Mapping[str, str] = os.environ) -> Settings:
    """Read ``path`` (YAML; ``None`` = no file), apply ``SR2FHIR_*`` overrides from
    ``environ``, validate, and return the settings with absolute paths.

    Raises :class:`ConfigError` listing every problem, one line each; a missing file is
    an error when ``path`` is given.
    """
    if path is None:
        label, base_dir, data = "<defaults>", Path.cwd(), {}
    else:
        path = Path(path)
        label, base_dir = str(path), Path(os.path.abspath(path)).parent
        data = _prepare(Settings, _read_yaml(path, label), base_dir)

    env_sources: dict[tuple[str, ...], str] = {}
    data = _apply_environ(data, environ, env_sources)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(error, data, label, env_sources) for error in exc.errors()]
        raise ConfigError(problems) from None  # the chained error would show input values
    return _absolutize(settings, base_dir)


def _read_yaml(path: Path, label: str) -> dict[Any, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{label}: no such file"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{label}: not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError([f"{label}: cannot read: {exc.strerror or exc}"]) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_describe_yaml_error(exc, label)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{label}: invalid YAML: {exc}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        sections = ", ".join(Settings.model_fields)
        raise ConfigError(
            [f"{label}: (top level): must be a mapping of sections ({sections}), not {_kind_of(data)}"]
        )
    return data


def _describe_yaml_error(exc: yaml.MarkedYAMLError, label: str) -> str:
    # Only the problem text and position: the snippet PyYAML prints may hold a secret.
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
    what = exc.problem or "invalid YAML"
    if exc.context:
        context_mark = exc.context_mark
        at = f" at line {context_mark.line + 1}" if context_mark and context_mark is not mark else ""
        what = f"{what} ({exc.context}{at})"
    kind = "YAML error" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error"
    return f"{label}: {where}: {kind}: {what}"


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML would keep
    the last one silently)."""


def _construct_mapping_once(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[tuple[str, str], int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        identity = (key_node.tag, key_node.value)
        if identity in seen:
            raise yaml.constructor.ConstructorError(
                None, None,
                f"duplicate key {key_node.value!r} (first given at line {seen[identity] + 1})",
                key_node.start_mark,
            )
        seen[identity] = key_node.start_mark.line
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_once)


def _apply_environ(
    data: dict[Any, Any], environ: Mapping[str, str], sources: dict[tuple[str, ...], str]
) -> dict[Any, Any]:
    """Merge ``SR2FHIR_A__B__C=value`` into a copy of ``data`` as ``{a: {b: {c: value}}}``;
    record which variable set which key path in ``sources``."""
    overrides = []
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or _ENV_DELIMITER not in name[len(ENV_PREFIX):]:
            continue
        keys = tuple(part.lower() for part in name[len(ENV_PREFIX):].split(_ENV_DELIMITER))
        if all(keys):
            overrides.append((keys, name, raw))
    merged = _deep_copy_mappings(data)
    for keys, name, raw in sorted(overrides, key=lambda item: (len(item[0]), item[0])):
        parent = merged
        for key in keys[:-1]:
            child = parent.get(key)
            if child is None:
                child = parent[key] = {}
            if not isinstance(child, dict):
                break  # the file's value there is already wrong; its error is reported
            parent = child
        else:
            parent[keys[-1]] = _parse_env_value(keys, raw, merged)
            sources[keys] = f"env {name}"
    return merged


def _parse_env_value(keys: tuple[str, ...], raw: str, data: Mapping[Any, Any]) -> Any:
    types = _field_types(keys, data)
    if any(isinstance(t, type) and issubclass(t, (str, SecretStr)) for t in types):
        return raw  # text and secrets verbatim: "0123", "null" or "yes" stay strings
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if any(isinstance(t, type) and issubclass(t, PurePath) for t in types) and isinstance(value, str) and value:
        return _absolute(value, Path.cwd())
    return value


def _deep_copy_mappings(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _deep_copy_mappings(value) for key, value in data.items()}
    return data


# --------------------------------------------------------------------------- paths


def _absolute(value: str | PurePath, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(os.path.normpath(base_dir / path))


def _prepare(model: type[BaseModel], data: Any, base_dir: Path) -> Any:
    """Copy of the file's ``data`` with relative paths of path-typed keys joined to
    ``base_dir``, and empty sections (every key commented out: ``null``) as ``{}``."""
    if not isinstance(data, dict):
        return data
    prepared = dict(data)
    for key, value in data.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            continue
        if _is_path(field.annotation):
            if isinstance(value, str) and value:
                prepared[key] = _absolute(value, base_dir)
        elif value is None and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            prepared[key] = {}
        elif (child := _child_model(field.annotation, value)) is not None:
            prepared[key] = _prepare(child, value, base_dir)
    return prepared


def _absolutize(model: BaseModel, base_dir: Path) -> Any:
    """``model`` with every relative path left (defaults) joined to ``base_dir``."""
    updates: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, PurePath) and not value.is_absolute():
            updates[name] = _absolute(value, base_dir)
        elif isinstance(value, BaseModel):
            new = _absolutize(value, base_dir)
            if new is not value:
                updates[name] = new
    return model.model_copy(update=updates) if updates else model


# --------------------------------------------------------------------------- model walking


def _candidate_types(annotation: Any) -> list[Any]:
    """The concrete types an annotation admits: ``Annotated`` and ``| None`` peeled off,
    unions flattened."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _candidate_types(get_args(annotation)[0])
    if origin is Union or origin is UnionType:
        return [t for arg in get_args(annotation) for t in _candidate_types(arg) if t is not NoneType]
    return [annotation]


def _is_path(annotation: Any) -> bool:
    return any(isinstance(t, type) and issubclass(t, PurePath) for t in _candidate_types(annotation))


def _child_model(annotation: Any, value: Any) -> type[BaseModel] | None:
    """The model a mapping value of this field is validated as; for a union of models
    (``fhir.auth``) the member whose ``kind`` matches the value's ``kind``."""
    models = [t for t in _candidate_types(annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
    if len(models) == 1:
        return models[0]
    kind = value.get("kind") if isinstance(value, Mapping) else None
    for model in models:
        field = model.model_fields.get("kind")
        if field is not None and kind in get_args(field.annotation):
            return model
    return None


def _models_at(keys: Sequence[Any], data: Any) -> list[type[BaseModel]]:
    """The model(s) that validate the mapping at ``keys``: all members of a union when
    the data does not pick one."""
    models: list[type[BaseModel]] = [Settings]
    for key in keys:
        value = data.get(key) if isinstance(data, Mapping) else None
        next_models: list[type[BaseModel]] = []
        for model in models:
            field = model.model_fields.get(key) if isinstance(key, str) else None
            if field is None:
                continue
            child = _child_model(field.annotation, value)
            if child is not None:
                next_models.append(child)
            else:
                next_models.extend(
                    t for t in _candidate_types(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)
                )
        models, data = next_models, value
    return models


def _field_types(keys: Sequence[Any], data: Any) -> list[Any]:
    """The types admitted at the key path ``keys`` (empty when the path is unknown)."""
    types: list[Any] = []
    for model in _models_at(keys[:-1], data):
        field = model.model_fields.get(keys[-1])
        if field is not None:
            types.extend(_candidate_types(field.annotation))
    return types


# --------------------------------------------------------------------------- messages


_MESSAGES = {
    "missing": "required, not given",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_too_long": "must be at most {max_length} characters",
    "literal_error": "must be one of {expected}",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
    "dict_type": "must be a mapping of keys",
    "list_type": "must be a list",
    "path_type": "must be a path",
    "path_not_file": "no such file",
    "path_not_directory": "no such directory",
    "url_type": "must be a URL",
    "url_parsing": "must be a URL ({error})",
    "url_scheme": "URL scheme must be {expected_schemes}",
    "byte_size": "must be a number of bytes, e.g. 67108864 or '64 MiB'",
    "byte_size_unit": "must be a number of bytes with a known unit (B, KB, KiB, MB, MiB, GB, GiB, ...)",
}


def _describe(
    error: Mapping[str, Any], data: Any, label: str, env_sources: Mapping[tuple[str, ...], str]
) -> str:
    """One problem line for one pydantic error; never includes the offending value."""
    loc = _clean_location(error["loc"], data)
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        message = "unknown key" + _suggestion(loc, data)
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, "kind")
        tags = ", ".join(repr(tag) for tag in _kinds_at(loc[:-1], data))
        message = f"must be one of {tags}" if kind == "union_tag_invalid" else f"required (one of {tags})"
    elif kind == "string_type":
        message = "must be a string"
        if isinstance(error.get("input"), (int, float, bool)):
            message += " (put it in quotes)"
    elif kind == "string_too_short":
        minimum = ctx.get("min_length", 1)
        message = "must not be empty" if minimum == 1 else f"must be at least {minimum} characters"
    elif kind in ("value_error", "assertion_error"):
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    elif kind in ("path_not_file", "path_not_directory") and isinstance(error.get("input"), (str, PurePath)):
        message = f"{_MESSAGES[kind]}: {error['input']}"  # a path, shown as resolved
    elif kind in _MESSAGES:
        try:
            message = _MESSAGES[kind].format(**{key: _plain_number(value) for key, value in ctx.items()})
        except (KeyError, IndexError):
            message = error["msg"]
    else:
        message = error["msg"]
    source = label
    for length in range(len(loc), 0, -1):
        if tuple(loc[:length]) in env_sources:
            source = env_sources[tuple(loc[:length])]
            break
    return f"{source}: {_dotted(loc)}: {message}"


def _clean_location(loc: Sequence[Any], data: Any) -> tuple[Any, ...]:
    """``loc`` without the tags pydantic inserts for discriminated unions
    (``fhir.auth.basic.username`` -> ``fhir.auth.username``)."""
    cleaned: list[Any] = []
    for part in loc:
        if isinstance(data, Mapping) and part not in data and data.get("kind") == part:
            continue
        cleaned.append(part)
        if isinstance(data, Mapping):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            data = None
    return tuple(cleaned)


def _dotted(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _suggestion(loc: tuple[Any, ...], data: Any) -> str:
    if not loc or not isinstance(loc[-1], str):
        return ""
    names = sorted({name for model in _models_at(loc[:-1], data) for name in model.model_fields})
    close = difflib.get_close_matches(loc[-1].lower(), names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kinds_at(loc: tuple[Any, ...], data: Any) -> list[str]:
    kinds: list[str] = []
    for model_type in _field_types(loc, data) if loc else []:
        if isinstance(model_type, type) and issubclass(model_type, BaseModel) and "kind" in model_type.model_fields:
            kinds.extend(get_args(model_type.model_fields["kind"].annotation))
    return kinds


def _plain_number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"
