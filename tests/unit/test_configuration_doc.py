"""docs/configuration.md lists exactly the tables, keys and environment variables that
herd/config.py accepts: a key added to the loader without a line in the doc (or a documented
key the loader refuses) fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from herd import config

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "configuration.md"
FULL = REPO / "config" / "example-deployment.toml"  # a config with every table
_SECTION = re.compile(r"^## `\[([\w.]+)\]`", re.MULTILINE)
_ROW_KEY = re.compile(r"^\| `(\w+)` \|", re.MULTILINE)


def accepted(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[str]]:
    """Each table (`""` for the file's top level, `servers.NAME` for any server) and the keys
    the loader accepts in it, as it says when it checks them (`_Table.only`)."""
    seen: dict[str, set[str]] = {}
    check = config._Table.only

    def only(table: config._Table, *known: str, what: str = "key") -> None:
        name = "servers.NAME" if table.name.startswith("servers.") else table.name
        seen.setdefault(name, set()).update(known)
        check(table, *known, what=what)

    monkeypatch.setattr(config._Table, "only", only)
    config.load_config(FULL, {"HERD_SECRET": "s", "RENGA_XMPP_PASSWORD": "p"})
    return seen


def documented() -> dict[str, set[str]]:
    text = DOC.read_text(encoding="utf-8")
    tables: dict[str, set[str]] = {}
    for section in _SECTION.finditer(text):
        following = text.find("\n## ", section.end())
        end = following if following >= 0 else len(text)
        tables[section[1]] = set(_ROW_KEY.findall(text, section.end(), end))
    return tables


def test_every_table_the_loader_knows_is_in_the_full_example(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = accepted(monkeypatch)
    tables = {"servers.NAME" if name == "servers" else name for name in seen.pop("")}
    missing = tables - set(seen)
    assert not missing, f"add these tables to {FULL.name} so their keys are checked: {missing}"


def test_the_doc_lists_exactly_the_keys_the_loader_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = accepted(monkeypatch)
    seen.pop("")
    doc = documented()
    assert set(doc) == set(seen), "tables: doc vs loader"
    for table, keys in seen.items():
        assert doc[table] == keys, (
            f"[{table}]: undocumented {sorted(keys - doc[table])}, "
            f"documented but refused {sorted(doc[table] - keys)}"
        )


def test_the_doc_lists_every_environment_variable_the_loader_reads() -> None:
    source = Path(config.__file__).read_text(encoding="utf-8")
    read = set(re.findall(r'env\.get\("(\w+)"', source))
    assert read >= {"HERD_SECRET", "PLACES_API_KEY", "RENGA_XMPP_PASSWORD", "RENGA_SMTP_PASSWORD"}
    text = DOC.read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", text, re.MULTILINE))
    assert listed == read
