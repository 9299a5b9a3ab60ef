#!/usr/bin/env bash
# Fetches the web console's npm packages (xterm.js, noVNC, and playwright-core for the browser
# tests), pinned by virt-console/npm/package-lock.json, into a cache keyed by the lockfile's hash.
# Prints the node_modules directory. virt-console's build script runs it (the assets are embedded
# in the binary at build time; nothing is fetched at run time); tests run it to find playwright-core.
#
# Cache: $VIRT_CONSOLE_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/virt-console. A run whose lockfile
# is cached touches no network. Safe to run concurrently (the cache entry appears atomically).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/virt-console/npm
hash=$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -c1-16)
base=${VIRT_CONSOLE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/virt-console}
dest=$base/$hash
if [ ! -f "$dest/.complete" ]; then
  command -v npm >/dev/null || { echo "console-assets: npm not found (apt-get install npm)" >&2; exit 1; }
  mkdir -p "$base"
  tmp=$(mktemp -d "$base/.tmp-$hash-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  cp "$src/package.json" "$src/package-lock.json" "$tmp/"
  (cd "$tmp" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) >&2
  touch "$tmp/.complete"
  # Another run may have won the race: keep its copy.
  mv -T "$tmp" "$dest" 2>/dev/null || true
fi
echo "$dest/node_modules"
