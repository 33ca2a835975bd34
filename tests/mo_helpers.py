"""Writing small gettext .mo catalogs for tests (GNU layout, little-endian, no hash table), so the ui-strings
datasets can be tested without the machine's catalogs."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

HEADER = "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n != 1);\n"


def write_mo(path: Path, messages: Iterable[tuple[str, str]], header: str = HEADER) -> Path:
    """A .mo file of (msgid, msgstr) messages plus the header entry; plurals are written as gettext stores
    them: msgid "one\\0many", msgstr "form0\\0form1" (pass them joined with \\0), contexts as "ctxt\\x04msgid"."""
    entries = sorted([(b"", header.encode())] + [(i.encode(), s.encode()) for i, s in messages])
    n = len(entries)
    ids_at, strs_at = 28, 28 + 8 * n
    data_at = strs_at + 8 * n
    tables, blob = [b"", b""], b""
    for column in (0, 1):
        for entry in entries:
            text = entry[column]
            tables[column] += struct.pack("<2I", len(text), data_at + len(blob))
            blob += text + b"\x00"
    head = struct.pack("<7I", 0x950412DE, 0, n, ids_at, strs_at, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + tables[0] + tables[1] + blob)
    return path
