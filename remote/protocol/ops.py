"""The protocol version, the status of every reply, errors as plain data, the handshake."""

from __future__ import annotations

import hmac
import traceback
from typing import Any

from ..errors import ProtocolError

#: Version of the protocol spoken between host and container; checked on every connect.
PROTOCOL_VERSION = 2

#: First item of every reply: the request succeeded, or it raised (then the second item
#: is the error as plain data, see :func:`error_payload`).
OK, ERROR = 0, 1


def error_payload(exc: BaseException) -> dict[str, str]:
    """An exception as plain data: qualified type name, message and formatted traceback."""
    cls = type(exc)
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(cls, exc, exc.__traceback__)),
    }


def check_hello(hello: Any, secret: str) -> None:
    """Check a client's first message: ``{"protocol": int, "secret": str, ...}``."""
    if not isinstance(hello, dict):
        raise ProtocolError("handshake must be a map")
    if hello.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version mismatch: client speaks {hello.get('protocol')!r}, "
            f"server speaks {PROTOCOL_VERSION}"
        )
    given = hello.get("secret")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), secret.encode()):
        raise ProtocolError("authentication failed: wrong or missing session secret")
