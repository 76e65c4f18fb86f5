"""The project's documents stand alone: no file points readers to a design document that is not
in the project (the docs once sent them to one for the config and the protocol)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SKIPPED = {
    ".git",
    ".venv",
    "var",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    "node_modules",
    ".pytest_cache",
}
GONE = "DESIGN" + ".md"  # spelt in two parts, so this file does not name it


def project_files() -> list[Path]:
    found: list[Path] = []
    todo = [REPO]
    while todo:
        for path in todo.pop().iterdir():
            if path.name in SKIPPED:
                continue
            if path.is_dir():
                todo.append(path)
            elif path.is_file() and path.stat().st_size < 4 << 20:
                found.append(path)  # every file: docs, code, config, templates, Makefile
    return found


def test_no_file_names_the_missing_design_document() -> None:
    files = project_files()
    assert any(path.name == "README.md" for path in files)
    naming = [
        str(path.relative_to(REPO))
        for path in files
        if GONE.lower() in path.read_bytes().decode("utf-8", "replace").lower()
    ]
    assert not naming, f"these files name {GONE}, which is not in the project: {naming}"
