"""Small shared helpers: the library logger and atomic file writes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

_LOGGER_NAME = "lmforge"


def get_logger(name: str = _LOGGER_NAME) -> logging.Logger:
    """The `lmforge` logger, printing warnings to stderr unless the application configured logging.

    Loading reports (e.g. newly initialised head weights) are warnings users must see, as in HF.
    """
    root = logging.getLogger(_LOGGER_NAME)
    if not root.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[lmforge] %(levelname)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logging.getLogger(name)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary sibling, fsync, then rename: readers never see a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
