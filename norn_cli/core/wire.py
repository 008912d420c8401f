"""WebSocket frame bytes built once per event and shared by every subscriber."""

from __future__ import annotations

import struct

__all__ = ["text_frame"]

_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")


def text_frame(data: bytes) -> bytes:
    """An unmasked, final text frame carrying `data` (server frames are never masked)."""
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65536:
        return _H16.pack(0x81, 126, n) + data
    return _H64.pack(0x81, 127, n) + data
