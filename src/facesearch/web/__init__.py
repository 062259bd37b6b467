"""The investigator web UI's templates (Jinja2, autoescaped) and static files (CSS, a tiny
script). The routes that render them are in :mod:`facesearch.api.routes.web`."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"

# What /static/<name> serves: a fixed list, never a path taken from the request.
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml", ".ico": "image/x-icon"}


@lru_cache(maxsize=1)
def environment():  # noqa: ANN201 - jinja2 is imported lazily
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
                             autoescape=jinja2.select_autoescape(("html",), default=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env


def render(name: str, **context: object) -> str:
    return environment().get_template(name).render(**context)


@lru_cache(maxsize=None)
def static_files() -> dict[str, tuple[bytes, str]]:
    """name -> (content, media type) for every file of ``static/`` with a known type."""
    out: dict[str, tuple[bytes, str]] = {}
    for p in sorted(STATIC_DIR.iterdir()):
        if p.is_file() and p.suffix in STATIC_TYPES:
            out[p.name] = (p.read_bytes(), STATIC_TYPES[p.suffix])
    return out
