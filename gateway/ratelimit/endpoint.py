"""Where and how the Valkey limiter connects: a URL read exactly as the ``valkey`` client reads
it (host, port, Unix socket, database, username, password, TLS and its ``ssl_*`` options, by
that package's ``parse_url``; TLS contexts by its ``ValkeySSLContext``), and a connection
opened with its handshake."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from valkey.asyncio.connection import SSLConnection, ValkeySSLContext, parse_url

from gateway.ratelimit.resp import Wire, check, resp_command


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect, read from a ``valkey://``, ``valkeys://`` or ``unix://`` URL
    (``redis://`` and ``rediss://`` too) exactly as the ``valkey`` client reads it."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a Unix socket instead of host:port
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line
    tls: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """Raises ValueError (or the ``valkey`` package's errors, or OSError for a missing
        CA file) for a URL that cannot be used."""
        opts = parse_url(url)
        parts = urlsplit(url)
        database = parts.path.strip("/")
        if parts.scheme != "unix" and database and not database.isdigit():
            raise ValueError(f"the database must be a number, not {database!r}")
        tls = None
        if opts.get("connection_class") is SSLConnection:
            opts = {**tls_defaults(opts), **opts}
            tls = ValkeySSLContext(
                keyfile=opts.get("ssl_keyfile"),
                certfile=opts.get("ssl_certfile"),
                cert_reqs=opts["ssl_cert_reqs"],
                ca_certs=opts.get("ssl_ca_certs"),
                ca_data=opts.get("ssl_ca_data"),
                check_hostname=opts["ssl_check_hostname"],
                min_version=opts.get("ssl_min_version"),
                ciphers=opts.get("ssl_ciphers"),
            ).get()
        return cls(
            host=opts.get("host") or "localhost",
            port=int(opts.get("port") or 6379),
            path=opts.get("path"),
            db=int(opts.get("db") or 0),
            username=opts.get("username"),
            password=opts.get("password"),
            tls=tls,
        )

    def handshake(self) -> list[bytes]:
        """The commands a new connection sends before its first exchange."""
        commands = []
        if self.password is not None:
            auth = [self.username, self.password] if self.username else [self.password]
            commands.append(resp_command(["AUTH", *auth]))
        if self.db:
            commands.append(resp_command(["SELECT", self.db]))
        return commands


def tls_defaults(opts: dict[str, Any]) -> dict[str, Any]:
    """TLS settings a ``valkeys://`` URL gets unless it says otherwise: the certificate is
    verified and, when it is, the server's name is checked against it (the ``valkey`` package
    alone would not check the name)."""
    cert_reqs = opts.get("ssl_cert_reqs", "required")
    return {"ssl_cert_reqs": cert_reqs, "ssl_check_hostname": cert_reqs != "none"}


def client_defaults(url: str) -> dict[str, Any]:
    """Keyword arguments for the ``valkey`` package's ``from_url`` that give its clients the
    same TLS checks as the lane (the URL's own settings still win there)."""
    opts = parse_url(url)
    return tls_defaults(opts) if opts.get("connection_class") is SSLConnection else {}


async def connect(endpoint: Endpoint) -> Wire:
    """Open a connection and run the handshake (AUTH, SELECT); no deadline of its own."""
    loop = asyncio.get_running_loop()
    if endpoint.path is not None:
        _, wire = await loop.create_unix_connection(Wire, endpoint.path, ssl=endpoint.tls)
    else:
        _, wire = await loop.create_connection(
            Wire,
            endpoint.host,
            endpoint.port,
            ssl=endpoint.tls,
            server_hostname=endpoint.host if endpoint.tls else None,
        )
    try:
        for command in endpoint.handshake():
            check(await wire.send(command))
    except BaseException:
        wire.close()
        raise
    return wire
