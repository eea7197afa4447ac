"""celgate as an OAuth protected resource: resource URIs, their metadata (RFC 9728) and the
challenges of a refusal (RFC 6750 with ``resource_metadata``, as the MCP authorization spec
asks).

Each MCP endpoint is a resource of its own: ``<base>/mcp/<server>`` and ``<base>/mcp``. The
metadata of ``<base>/mcp/github`` is at ``<base>/.well-known/oauth-protected-resource/mcp/github``
(RFC 9728 section 3.1: the well-known segment goes between the host and the path).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.auth.settings import OAuthConfig

WELL_KNOWN = "/.well-known/oauth-protected-resource"
AGGREGATE = "/mcp"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # what a server's name may be


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One protected MCP endpoint: its resource URI, metadata URL and required scopes."""

    path: str  # "/mcp" or "/mcp/<server>"
    resource: str
    metadata_url: str
    scopes: tuple[str, ...]
    audiences: frozenset[str]  # what ``aud`` may name to be accepted here


def endpoints(config: OAuthConfig, servers: list[str]) -> dict[str, Endpoint]:
    """Every protected endpoint by path; ``/mcp`` needs every server's scopes, since it reaches
    every server."""
    every = set(config.scopes).union(*config.server_scopes.values())
    out = {AGGREGATE: _endpoint(config, AGGREGATE, every)}
    for name in servers:
        path = f"{AGGREGATE}/{name}"
        out[path] = _endpoint(config, path, {*config.scopes, *config.server_scopes.get(name, ())})
    return out


def endpoint_at(config: OAuthConfig, known: dict[str, Endpoint], path: str) -> Endpoint | None:
    """The endpoint at ``path``. Any ``/mcp/<name>`` a server could have has one, whether or
    not such a server exists: the one it would have with no scopes of its own. So a caller
    without credentials gets the same challenge and metadata for every name, and cannot list
    the servers behind the gateway by probing (the 404 comes only after authentication)."""
    found = known.get(path)
    if found is not None or not path.startswith(AGGREGATE + "/"):
        return found
    if _NAME.fullmatch(path[len(AGGREGATE) + 1 :]) is None:
        return None  # never a server's path: nothing to hide
    return _endpoint(config, path, set(config.scopes))


def _endpoint(config: OAuthConfig, path: str, scopes: set[str]) -> Endpoint:
    base = config.resource
    resource = base + path
    accepted = frozenset({resource, base, *config.audience})
    return Endpoint(path, resource, base + WELL_KNOWN + path, tuple(sorted(scopes)), accepted)


def metadata(config: OAuthConfig, endpoint: Endpoint | None) -> dict[str, Any]:
    """The Protected Resource Metadata document of an endpoint (None: the gateway itself)."""
    every = set(config.scopes).union(*config.server_scopes.values())
    resource = endpoint.resource if endpoint is not None else config.resource
    scopes = endpoint.scopes if endpoint is not None else tuple(sorted(every))
    name = config.resource_name
    doc: dict[str, Any] = {
        "resource": resource,
        "authorization_servers": [config.issuer],
        "bearer_methods_supported": ["header"],
        "resource_name": f"{name} {endpoint.path}" if endpoint is not None else name,
    }
    if scopes:
        doc["scopes_supported"] = list(scopes)
    return doc


def challenge(
    endpoint: Endpoint | None, error: str | None = None, description: str | None = None
) -> str:
    """A ``WWW-Authenticate`` value. Without credentials there is no error code (RFC 6750
    section 3.1); ``description`` is one of our own fixed phrases, never the token's text."""
    parts = []
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    if endpoint is not None:
        parts.append(f'resource_metadata="{endpoint.metadata_url}"')
        if endpoint.scopes:
            parts.append(f'scope="{" ".join(endpoint.scopes)}"')
    return "Bearer " + ", ".join(parts) if parts else 'Bearer realm="celgate"'


def document_at(
    config: OAuthConfig, known: dict[str, Endpoint], rest: str
) -> dict[str, Any] | None:
    """The metadata served at ``WELL_KNOWN + rest``: the gateway's own at the bare path, an
    endpoint's at its path; None for anything else."""
    path = "/" + rest.strip("/") if rest.strip("/") else ""
    if not path:
        return metadata(config, None)
    endpoint = endpoint_at(config, known, path)
    return metadata(config, endpoint) if endpoint is not None else None
