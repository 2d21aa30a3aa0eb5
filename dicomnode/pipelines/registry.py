"""Finding pipelines: the ``dicomnode.pipelines`` entry points, and checking their options.

Every pipeline, the built-in ones included, is a class installed under the
entry-point group ``dicomnode.pipelines``; a hospital's own pipeline is a
separate package with one line in its ``pyproject.toml``::

    [project.entry-points."dicomnode.pipelines"]
    my_pipeline = "my_package.pipeline:MyPipeline"

A ``[pipelines.NAME]`` section may instead name a class directly
(``type = "package.module:Class"``). :func:`check_pipelines` resolves every
route's pipeline and every section, validates each section against the
pipeline's ``options_model`` and asks each pipeline for its own start-up
problems (a missing bundle), so ``dicomnode config check`` and start-up report
them all, one line each.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from dicomnode.config import ConfigError, PipelineConfig, PipelineOptions
from dicomnode.pipelines.base import Pipeline, PipelineError

if TYPE_CHECKING:
    from dicomnode.config import Settings

ENTRY_POINT_GROUP = "dicomnode.pipelines"


class ConfigProblems(ConfigError):
    """Several configuration problems, one line each (``str()`` joins them)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def import_object(target: str, what: str) -> Any:
    """The object named ``"package.module:attribute"``; PipelineError naming *what* if absent."""
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise PipelineError(f"{what} {target!r} is not of the form package.module:name")
    try:
        found = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise PipelineError(f"cannot import {what} {target!r}: {exc}") from None
    return found


@cache
def installed() -> dict[str, EntryPoint]:
    """The pipelines installed under the entry-point group, by name (not imported yet)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _as_pipeline(found: Any, target: str) -> type[Pipeline]:
    if not (isinstance(found, type) and issubclass(found, Pipeline)):
        raise PipelineError(f"{target} is not a dicomnode Pipeline subclass")
    return found


def pipeline_class(name: str, section: PipelineConfig | None = None) -> type[Pipeline]:
    """The class of pipeline *name*: its section's ``type``, else the installed pipeline *name*.

    Raises
    ------
    PipelineError
        No such pipeline is installed, or its class cannot be imported.
    """
    target = (section.type if section is not None else None) or name
    if ":" in target:
        return _as_pipeline(import_object(target, f"pipeline {name}:"), target)
    points = installed()
    if target not in points:
        known = ", ".join(sorted(points)) or "none"
        close = difflib.get_close_matches(target, list(points), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PipelineError(f"no pipeline named {target!r} is installed (installed: {known}){hint}")
    try:
        loaded = points[target].load()
    except Exception as exc:  # a broken plugin must not hide the others
        raise PipelineError(
            f"pipeline {target}: cannot import {points[target].value}: {exc}"
        ) from None
    return _as_pipeline(loaded, points[target].value)


def pipeline_options(
    name: str, cls: type[Pipeline], section: PipelineConfig, device: str | None = None
) -> PipelineOptions:
    """*section* validated by *cls*; *device* (``worker --device``) overrides where it applies.

    Raises
    ------
    OptionsError
        A key *cls* does not take, or a value it refuses, named in one line.
    """
    values = section.model_dump(exclude_unset=True)
    if device is not None and "device" in cls.options_model.model_fields:
        values["device"] = device
    return cls.validate_options(name, values)


def build_pipeline(name: str, settings: Settings, device: str | None = None) -> Pipeline:
    """A ready pipeline *name* (its model loaded), as a worker keeps it."""
    section = settings.pipeline(name)
    cls = pipeline_class(name, section)
    return cls(name, pipeline_options(name, cls, section, device))


def _unknown_key_hint(problem: str, cls: type[Pipeline]) -> str:
    """Add the closest option name to an "unknown key" line."""
    key = problem.split(":", 1)[0].rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, list(cls.options_model.model_fields), n=1)
    return (
        f"{problem}; did you mean {close[0]!r}?" if close and "unknown key" in problem else problem
    )


@dataclass(frozen=True)
class PipelineCheck:
    """What :func:`check_pipelines` found.

    Attributes
    ----------
    problems
        One line per problem, naming the key: start-up must not go on.
    elsewhere
        Pipelines this process does not run and that are not installed here
        (a receiver-only node routes to pipelines installed on worker hosts).
    """

    problems: tuple[str, ...]
    elsewhere: tuple[str, ...]


def check_pipelines(settings: Settings, *, runs: Iterable[str] | None = None) -> PipelineCheck:
    """Every problem of the configured pipelines, one line each.

    Checks each route's pipeline and each ``[pipelines.NAME]`` section: the
    pipeline is installed (or importable), the section holds only its options
    and valid values, and that what it needs at start-up is there
    (``Pipeline.check``: e.g. the bundle folder). *runs* names the pipelines
    this process runs (None: all of them, as ``config check`` assumes); one it
    does not run may be installed only on worker hosts, and is left out when
    it is not installed here, and its bundle is not looked for.
    """
    problems: list[str] = []
    elsewhere: list[str] = []
    where: dict[str, str] = {}
    for index, route in enumerate(settings.routes):
        where.setdefault(route.pipeline, f"routes.{index}.pipeline")
    for name in settings.pipelines:
        where.setdefault(name, f"pipelines.{name}")
    running = None if runs is None else set(runs)
    for name, key in where.items():
        local = running is None or name in running
        section = settings.pipeline(name)
        try:
            cls = pipeline_class(name, section)
        except PipelineError as exc:
            (problems.append(f"{key}: {exc}") if local else elsewhere.append(name))
            continue
        try:
            options = pipeline_options(name, cls, section)
        except PipelineError as exc:
            problems.append(_unknown_key_hint(str(exc), cls))
            continue
        if local:
            problems.extend(cls.check(name, options))
    return PipelineCheck(tuple(problems), tuple(elsewhere))


def require_valid_pipelines(
    settings: Settings, *, runs: Iterable[str] | None = None
) -> PipelineCheck:
    """:func:`check_pipelines`, raising :class:`ConfigProblems` when it found problems."""
    found = check_pipelines(settings, runs=runs)
    if found.problems:
        raise ConfigProblems(list(found.problems))
    return found


def own_options(cls: type[Pipeline]) -> dict[str, Any]:
    """The options *cls* adds to the common ones of its base (name → pydantic FieldInfo)."""
    model = cls.options_model
    base = next(
        (b for b in model.__mro__[1:] if b.__module__ == "dicomnode.config"), PipelineOptions
    )
    inherited = getattr(base, "model_fields", {})
    return {k: v for k, v in model.model_fields.items() if k not in inherited}


def _annotation(field: Any) -> str:
    text = str(field.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text.replace("NoneType", "None").replace("pathlib.", "").replace("|", "\\|")


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    return "—" if field.default is None else f"`{field.default!r}`".replace("'", '"')


def options_markdown(names: Iterable[str] | None = None) -> str:
    """A Markdown table per installed pipeline (default: all) of its own options.

    ``docs/pipelines.md`` holds this text for the built-in pipelines; a test
    compares the two, so the documentation cannot drift from the models.
    """
    points = installed()
    out = []
    for name in sorted(names or points):
        cls = pipeline_class(name)
        base = next(b for b in cls.options_model.__mro__ if b.__module__ == "dicomnode.config")
        own = own_options(cls)
        if not own:
            out += [f"### `{name}`", "", f"The keys of `{base.__name__}`; none of its own.", ""]
            continue
        out += [f"### `{name}`", "", f"The keys of `{base.__name__}`, and:", ""]
        out += [*_table(own), ""]
    return "\n".join(out)


def _table(fields: dict[str, Any]) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    return rows + list(_rows(fields))


def _rows(fields: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """One row per key; a sub-table (a pydantic model, e.g. ``priors``) as ``priors.KEY`` rows."""
    for key, field in fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            # [pipelines.NAME.priors] is its own TOML table: its keys are what one writes.
            yield from _rows(dict(annotation.model_fields), f"{prefix}{key}.")
            continue
        yield (
            f"| `{prefix}{key}` | {_annotation(field)} | {_default(field)} "
            f"| {field.description or ''} |"
        )


def common_options_markdown() -> str:
    """The keys every model pipeline takes (``ModelOptions``), as a Markdown table."""
    from dicomnode.config import ModelOptions

    return "\n".join(_table(dict(ModelOptions.model_fields))) + "\n"
