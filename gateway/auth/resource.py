"""celgate as an OAuth protected resource: resource URIs, their metadata (RFC 9728) and the
challenges of a refusal (RFC 6750 with ``resource_metadata``, as the MCP authorization spec
asks).

Each MCP endpoint is a resource of its own: ``<base>/mcp/<server>`` and ``<base>/mcp``. The
metadata of ``<base>/mcp/github`` is at ``<base>/.well-known/oauth-protected-resource/mcp/github``
(RFC 9728 section 3.1: the well-known segment goes between the host and the path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.auth.settings import OAuthConfig

WELL_KNOWN = "/.well-known/oauth-protected-resource"
AGGREGATE = "/mcp"


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
    base = config.resource
    every = set(config.scopes).union(*config.server_scopes.values())
    out: dict[str, Endpoint] = {}
    for path, scopes in [(AGGREGATE, every)] + [
        (f"{AGGREGATE}/{name}", {*config.scopes, *config.server_scopes.get(name, ())})
        for name in servers
    ]:
        resource = base + path
        accepted = frozenset({resource, base, *config.audience})
        out[path] = Endpoint(
            path, resource, base + WELL_KNOWN + path, tuple(sorted(scopes)), accepted
        )
    return out


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
    endpoint = known.get(path)
    return metadata(config, endpoint) if endpoint is not None else None
