"""DNS-rebinding protection for the MCP endpoint, and signed session ids.

A web page on an attacker's domain that resolves to 127.0.0.1 reaches a local gateway with its
own ``Host`` and ``Origin``: both are checked against allow-lists (loopback names by default).

Session ids handed to clients are the upstream's id plus an HMAC over (server, grant, id), so
any replica holding the same secret can tell a real session from a made-up one without shared
state, and one grant cannot ride another grant's session.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Iterable
from functools import lru_cache
from urllib.parse import SplitResult, urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


class HostGuard:
    """Host and Origin allow-lists; ``*`` in a list allows anything."""

    def __init__(self, hosts: Iterable[str], origins: Iterable[str], listen_host: str) -> None:
        names = set(LOOPBACK_NAMES)
        if listen_host not in ("0.0.0.0", "::"):
            names.add(listen_host)
        self.hosts = {h.lower() for h in hosts} or names
        self.any_host = "*" in self.hosts
        self.origins = {o.lower().rstrip("/") for o in origins}
        self.any_origin = "*" in self.origins
        self.origin_names = set(LOOPBACK_NAMES) if not self.origins else set()

    def host_ok(self, host: str | None) -> bool:
        """An allowed name, alone or with a port (any number: a rebinding page changes the
        name, not the port), or an allowed ``name:port`` as given."""
        if self.any_host:
            return True
        if not host:
            return False
        host = host.lower()
        return host in self.hosts or host_name(host) in self.hosts

    def origin_ok(self, origin: str | None) -> bool:
        """No Origin (non-browser clients) is fine; a browser's Origin must be allowed."""
        if origin is None or self.any_origin:
            return True
        origin = origin.lower().rstrip("/")
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        if not _port_ok(parts):
            return False
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        return parts.scheme in ("http", "https") and host in self.origin_names


def host_name(host: str) -> str | None:
    """The name in a Host value that carries a port (``name:port``, ``[v6]:port``), or None
    when what follows the last colon is not a port: ``localhost:evil.example`` names no
    loopback host, though the part before its colon does."""
    name, colon, port = host.rpartition(":")
    if not colon or not (0 < len(port) <= 5 and port.isascii() and port.isdigit()):
        return None
    if name.startswith("["):
        return name if name.endswith("]") and "]" not in name[:-1] else None
    return name if "]" not in name and ":" not in name else None


def _port_ok(parts: SplitResult) -> bool:
    """No port, or a number: ``hostname`` alone would read ``http://localhost:evil.example``
    as localhost (``port`` raises on what is not a port)."""
    try:
        return parts.port is None or parts.port >= 0
    except ValueError:
        return False


def same_text(presented: str, expected: str) -> bool:
    """``hmac.compare_digest`` for text of any kind: on two strings it raises for one that is
    not ASCII, and a caller's header or id may be anything (a 500 where a refusal is due)."""
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


#: Session ids longer than this are checked without being remembered.
MAX_CACHED_ID = 256


_NONCE = 12  # bytes of an AES-GCM nonce, random for every seal


class SessionSigner:
    """Wraps upstream session ids as ``<id>.<mac>`` and checks them on the way back."""

    def __init__(self, secret: str | None) -> None:
        self.key = (secret or secrets.token_hex(32)).encode()
        # Every request and answer of a session carries its id: remember recent MACs, of ids
        # of a sane length only (callers present them: a cache of long ones would hold
        # 4,096 heads' worth of bytes).
        self._recent_mac = lru_cache(maxsize=4096)(self._compute_mac)
        seal_key = hmac.new(self.key, b"celgate seal", hashlib.sha256).digest()
        self._aead = AESGCM(seal_key)

    def _mac(self, server: str, owner: str, sid: str) -> str:
        if len(sid) > MAX_CACHED_ID:
            return self._compute_mac(server, owner, sid)
        return self._recent_mac(server, owner, sid)

    def _compute_mac(self, server: str, owner: str, sid: str) -> str:
        msg = f"{server}\x00{owner}\x00{sid}".encode()
        digest = hmac.new(self.key, msg, hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(digest).decode()

    def wrap(self, server: str, owner: str, sid: str) -> str:
        return f"{sid}.{self._mac(server, owner, sid)}"

    def unwrap(self, server: str, owner: str, presented: str) -> str | None:
        """The upstream id, or None when the presented id was not issued here for this owner."""
        return _checked(presented.strip(), lambda sid: self._mac(server, owner, sid))

    def wrap_event(self, server: str, owner: str, session: str | None, event_id: str) -> str:
        """An SSE event id bound to (server, owner, session), as ``<id>.<mac>``."""
        return f"{event_id}.{self._event_mac(server, owner, session or '', event_id)}"

    def unwrap_event(
        self, server: str, owner: str, session: str | None, presented: str
    ) -> str | None:
        """The upstream's event id, or None when it was not given to this caller."""

        def mac_of(event_id: str) -> str:
            return self._event_mac(server, owner, session or "", event_id)

        return _checked(presented.strip(), mac_of)

    def wrap_task(self, server: str, owner: str, task_id: str) -> str:
        """An upstream's task id bound to (server, owner), as ``<id>.<mac>``: every agent
        behind the gateway reaches the upstream as one client, which cannot keep their tasks
        apart, so the gateway does."""
        return f"{task_id}.{self._task_mac(server, owner, task_id)}"

    def unwrap_task(self, server: str, owner: str, presented: str) -> str | None:
        """The upstream's task id, or None when the presented one was not given to this owner."""
        return _checked(presented, lambda task_id: self._task_mac(server, owner, task_id))

    def _task_mac(self, server: str, owner: str, task_id: str) -> str:
        return self._tagged_mac("task", server, owner, task_id)

    def _event_mac(self, server: str, owner: str, session: str, event_id: str) -> str:
        return self._tagged_mac("event", server, owner, session, event_id)

    def seal(self, label: str, owner: str, text: str) -> str:
        """``text`` encrypted (AES-GCM) and bound to ``label`` and ``owner``: what its holder
        may hold but not read (an upstream's list cursor may name the last tool of its page,
        a tool hidden from this caller: red-team wave 40)."""
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, text.encode(), f"{label}\x00{owner}".encode())
        return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def unseal(self, label: str, owner: str, presented: str) -> str | None:
        """The text ``seal`` sealed for ``label`` and ``owner``, or None for anything else."""
        try:
            raw = base64.urlsafe_b64decode(presented + "=" * (-len(presented) % 4))
            opened = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], f"{label}\x00{owner}".encode())
            return opened.decode()
        except (ValueError, binascii.Error, InvalidTag, UnicodeDecodeError):
            return None

    def _tagged_mac(self, *parts: str) -> str:
        digest = hmac.new(self.key, "\x00".join(parts).encode(), hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(digest).decode()


def _checked(presented: str, mac_of: Callable[[str], str]) -> str | None:
    """The id inside ``<id>.<mac>``, or None when the MAC is not the one ``mac_of`` gives it."""
    inner, dot, mac = presented.rpartition(".")
    if not dot or not inner or not same_text(mac, mac_of(inner)):
        return None
    return inner
