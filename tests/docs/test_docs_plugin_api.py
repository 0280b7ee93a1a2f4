"""Every manifest field (recursively) and every rule kind is documented in docs/plugin-api.md."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from medlens.plugin_api import v1

DOC = (Path(__file__).resolve().parents[2] / "docs" / "plugin-api.md").read_text()


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []

    def walk(m: type[BaseModel]) -> None:
        if m in seen:
            return
        seen.append(m)
        for f in m.model_fields.values():
            stack = [f.annotation]
            while stack:
                t = stack.pop()
                stack.extend(typing.get_args(t))
                if (
                    isinstance(t, type)
                    and issubclass(t, BaseModel)
                    and t.__module__.endswith("_manifest")
                ):
                    walk(t)

    walk(root)
    return seen


def _section(name: str) -> str:
    m = re.search(rf"^### `{name}`\n(.*?)(?=^##|\Z)", DOC, re.S | re.M)
    assert m, f"docs/plugin-api.md has no section for {name}"
    return m.group(1)


def test_every_manifest_field_is_documented() -> None:
    models = _models(v1.Manifest)
    assert len(models) >= 10
    for model in models:
        section = _section(model.__name__)
        for field in model.model_fields:
            assert f"| `{field}` |" in section, f"{model.__name__}.{field} is undocumented"


def test_every_rule_kind_is_documented() -> None:
    for rule in (
        v1.Equals,
        v1.Regex,
        v1.Range,
        v1.Contains,
        v1.MinSlices,
        v1.AllOf,
        v1.AnyOf,
        v1.Not,
    ):
        kind = rule.model_fields["kind"].default
        row = re.search(rf"^\| `{kind}` \| (.*?) \|", DOC, re.M)
        assert row, f"rule kind {kind!r} is undocumented"
        for field in rule.model_fields:
            if field != "kind":
                assert f"`{field}`" in row.group(1), f"{kind}.{field} is undocumented"
