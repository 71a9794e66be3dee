"""User-facing errors: one line that names the file and the fix, exit status 2."""
from __future__ import annotations


class ReconError(Exception):
    """A mistake in the user's input. The CLI prints `error: <message>` and exits with status 2."""

    exit_code = 2

    def __init__(self, message: str, path: object | None = None, fix: str | None = None):
        parts = []
        if path is not None:
            parts.append(f"{path}:")
        parts.append(message.rstrip("."))
        text = " ".join(parts)
        if fix:
            text += f". {fix.rstrip('.')}"
        super().__init__(text + ".")
