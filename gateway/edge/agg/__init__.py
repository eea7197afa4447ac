"""The aggregated endpoint ``/mcp`` built on the relay's parts: names (prefixes, the
catalogue), one request to each upstream (``upcall``), the stateless 2026-07-28 router, and
the handshake-era session caps."""
