"""The web's Jinja environment over `templates/web/` and the static files beside the templates,
both read once at start (pure: no Twisted; the files are read by the wiring's call).

Autoescape is on for every template (`.html.j2`), and `StrictUndefined` makes a misspelt name an
error rather than an empty string.  What a template shows of a title, a name or a comment is
therefore always text, never markup: the only markup a page gets from outside a template is the
positions figure, which `web.svg` builds from escaped parts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from jinja2 import Environment, FileSystemLoader, StrictUndefined

__all__ = ["STATIC_TYPES", "TEMPLATES", "StaticFile", "WebTemplates", "read_static"]

TEMPLATES: Final = Path(__file__).resolve().parent.parent / "templates" / "web"
STATIC_TYPES: Final[Mapping[str, bytes]] = {
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
}
MAX_STATIC_BYTES: Final = 1 << 20


class WebTemplates(Environment):
    """Built once by the wiring and passed to the site."""

    def __init__(self, directory: Path = TEMPLATES) -> None:
        super().__init__(
            loader=FileSystemLoader(directory),
            undefined=StrictUndefined,
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )

    def page(self, name: str, context: Mapping[str, object]) -> bytes:
        """`templates/web/<name>.html.j2` rendered, as UTF-8."""
        return self.get_template(f"{name}.html.j2").render(context).encode("utf-8")


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: bytes


def read_static(directory: Path = TEMPLATES / "static") -> dict[str, StaticFile]:
    """The files served under `/static/`, by name: only regular files of a known type right in
    the folder (no listing, no subfolders, no dot files), each at most 1 MiB."""
    files: dict[str, StaticFile] = {}
    if not directory.is_dir():
        return files
    for path in sorted(directory.iterdir()):
        kind = STATIC_TYPES.get(path.suffix)
        if kind is None or path.name.startswith(".") or not path.is_file():
            continue
        body = path.read_bytes()
        if len(body) <= MAX_STATIC_BYTES:
            files[path.name] = StaticFile(body, kind)
    return files
