"""Host and Origin checks for the operator's pages (the console and the admin API).

The MCP endpoint's ``HostGuard`` decides which Host names this gateway answers to and which
foreign Origins may call it. For the operator's pages a browser's request from the page's own
origin (Origin naming exactly the allowed Host it was sent to) is accepted too, so a console
opened at ``http://celgate:8787`` works where ``security.allowed_hosts`` names ``celgate``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.auth.identity import generated_admin_token
from gateway.auth.throttle import FailureThrottle
from gateway.pipeline.gateway import Gateway

#: On every refusal of who is asking (a wrong or missing token, a foreign Host or Origin, too
#: many wrong tokens): the connection ends with the answer, as the MCP endpoints' do, so a
#: guesser opens a connection a guess rather than trying on one kept alive.
CLOSE = {"Connection": "close"}


def refusal(gateway: Gateway, host: str | None, origin: str | None) -> tuple[int, str] | None:
    """(status, message) when the request must be refused, else None."""
    guard = gateway.guard
    if not guard.host_ok(host):
        return 421, "Host not allowed (security.allowed_hosts)"
    if guard.origin_ok(origin) or _same_origin(origin, host):
        return None
    return 403, "Origin not allowed (security.allowed_origins)"


def _same_origin(origin: str | None, host: str | None) -> bool:
    if origin is None or host is None:
        return False
    parts = urlsplit(origin.strip().lower())
    return parts.scheme in ("http", "https") and parts.netloc == host.strip().lower()


class AdminThrottle(FailureThrottle):
    """Wrong admin tokens counted per client address; past the count, a token is refused
    unchecked (429), unless it has the form ``celgate admin-token new`` makes. Any client
    sharing the operator's address (an agent on the same host, everyone behind one proxy)
    kept the operator out with one wrong token every few seconds, the right token refused
    too (red-team wave 58); a generated token cannot be guessed, so it is always checked
    (a wrong one is still counted)."""

    def wait_for(self, client: str | None, token: str | None) -> float | None:
        """Seconds until ``token`` may be tried from ``client``, or None: try it now."""
        return None if generated_admin_token(token) else self.wait(client)


def admin_throttle(gateway: Gateway) -> AdminThrottle:
    """The one count of wrong admin tokens, shared by the console's sign-in and the admin API."""
    found = gateway.extras.get("admin_throttle")
    if not isinstance(found, AdminThrottle):
        found = gateway.extras["admin_throttle"] = AdminThrottle()
    return found
