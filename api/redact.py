"""Text for a client never shows the server's own directories: error messages and job failure
reasons name them as ``<the jobs root>`` etc."""
from __future__ import annotations

from pathlib import Path

from flask import current_app, has_app_context

from common.config import CONFIGS_DIR


def server_roots() -> list[tuple[str, str]]:
    """(absolute path, how a client may see it) for the server's own directories, longest
    first, in both the configured and the symlink-resolved spelling."""
    ext = current_app.extensions.get("teacher") if has_app_context() else None
    settings = getattr(ext, "settings", None)
    if settings is None:
        return []
    named = {"the data root": settings.data_root, "the jobs root": settings.jobs_root,
             "the analyses root": getattr(settings, "analyses_dir", None),
             "the configs folder": getattr(settings, "configs_dir", None) or CONFIGS_DIR}
    roots: dict[str, str] = {}
    for label, path in named.items():
        if path:
            for spelling in {str(path), str(Path(path).resolve())}:
                roots.setdefault(spelling.rstrip("/"), f"<{label}>")
    return sorted(roots.items(), key=lambda item: -len(item[0]))


def scrub(text: str, roots: list[tuple[str, str]]) -> str:
    """Error text for a client: the server's absolute paths never appear in it."""
    for path, label in roots:
        if path and path != "/":
            text = text.replace(path, label)
    return text
