"""Small shared helpers: the library logger, atomic file writes, and where a file stops being UTF-8."""

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


UTF8_BOM = b"\xef\xbb\xbf"


def invalid_utf8_message(path: str | os.PathLike, lineno: int, line: bytes, error: UnicodeDecodeError) -> str:
    """`data.csv:3: not valid UTF-8 (byte 0xff at column 12); ...` for a line that failed to decode.

    The column counts characters (not bytes) before the bad byte, from 1, as an editor shows it.
    """
    column = len(line[: error.start].decode("utf-8", errors="replace")) + 1
    return (f"{path}:{lineno}: not valid UTF-8 (byte 0x{line[error.start]:02x} at column {column}); "
            "re-save the file as UTF-8")


def find_invalid_utf8(path: str | os.PathLike) -> str | None:
    """`invalid_utf8_message` for the first line of `path` that is not UTF-8 (a leading BOM is allowed),
    or None. For readers that decode in text mode: they call this once decoding failed somewhere.

    Lines are split at b"\n", which never occurs inside a multi-byte UTF-8 character, so a file
    decodes if and only if each of its lines does.
    """
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if lineno == 1 and line.startswith(UTF8_BOM):
                line = line[len(UTF8_BOM) :]
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                return invalid_utf8_message(path, lineno, line, error)
    return None
