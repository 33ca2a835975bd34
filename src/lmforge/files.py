"""File helpers: atomic writes (the one way lmforge writes a file in place), fsync, and where a file stops being UTF-8."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (directories: so that renames/creations inside are durable)."""
    if path.is_dir() and os.name == "nt":  # Windows cannot open directories for fsync
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root`."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_path(Path(dirpath, name))
        fsync_path(Path(dirpath))


def remove_dir(path: Path) -> None:
    """Delete a folder via a rename to a hidden name first, so a crash mid-delete cannot leave a
    half-deleted folder that looks complete."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temporary sibling, which is fsynced and renamed over `path` (the folder is
    fsynced too): readers never see a partial file, and a crash leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Indented UTF-8 JSON, a newline at the end."""
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


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


def read_text_utf8(path: str | os.PathLike) -> str:
    """The whole text of a UTF-8 file (a leading BOM dropped); a non-UTF-8 byte raises ValueError naming the
    file, line and column (`find_invalid_utf8`)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(find_invalid_utf8(path) or f"{path}: not valid UTF-8") from None
