#!/usr/bin/env bash
# Builds the envtest-style control plane the k8s tests run against: a real kube-apiserver (built
# from Debian's kubernetes source package; no registry ships the binary) beside Debian's etcd.
# Result: a directory holding kube-apiserver and etcd, printed on stdout. Cached per version under
# $HOME/.cache/glmvoice/kube-<version>/; if KUBEBUILDER_ASSETS already holds both binaries it is used as is.
# Needs root to apt-get what is missing (golang-go, etcd-server, ...). Cold build: 5-10 min on 2 cores.
set -euo pipefail

KUBE_VERSION=1.20.2
DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1

if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/kube-apiserver" && -x "$KUBEBUILDER_ASSETS/etcd" ]]; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

CACHE="${HOME}/.cache/glmvoice/kube-${KUBE_VERSION}"
if [[ -x "$CACHE/kube-apiserver" && -x "$CACHE/etcd" ]]; then
  echo "$CACHE"
  exit 0
fi

log() { echo "build-kube-assets: $*" >&2; }

# go, make and rsync build the server; etcd runs beside it; openssl makes the test fixture's keys.
declare -A PROVIDER=([go]=golang-go [etcd]=etcd-server [make]=make [rsync]=rsync [openssl]=openssl)
missing=()
for tool in "${!PROVIDER[@]}"; do
  command -v "$tool" >/dev/null || missing+=("${PROVIDER[$tool]}")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    log "needs root to install: apt-get install -y ${missing[*]}"
    exit 1
  fi
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
fi

build_apiserver() {
  WORK="$CACHE/src"
  mkdir -p "$WORK"
  SRC="$WORK/kubernetes-${KUBE_VERSION}"
  if [[ ! -d "$SRC" ]]; then
    # Source entries go into a private apt state so the machine's own apt configuration stays untouched.
    APTDIR="$WORK/apt"
    mkdir -p "$APTDIR/lists/partial" "$APTDIR/sources.list.d"
    for f in /etc/apt/sources.list.d/*.sources; do
      sed 's/^Types: deb$/Types: deb-src/' "$f" > "$APTDIR/sources.list.d/$(basename "$f")"
    done
    APT_OPTS=(-o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Etc::SourceParts=$APTDIR/sources.list.d"
              -o "Dir::Etc::SourceList=/dev/null")
    log "fetching kubernetes $DEB_VERSION source"
    apt-get "${APT_OPTS[@]}" update -q >&2
    (cd "$WORK" && apt-get "${APT_OPTS[@]}" source --download-only "kubernetes=$DEB_VERSION" >&2)
    tar -xzf "$WORK"/kubernetes_*.orig.tar.gz -C "$WORK"
    [[ -d "$SRC" ]] || { log "unexpected source layout in $WORK"; exit 1; }
  fi

  log "building kube-apiserver $KUBE_VERSION (slow)"
  # The Makefile generates the OpenAPI definitions the server needs (they are not in the source tree);
  # the version file gives the binary its real version instead of v0.0.0.
  cat > "$WORK/version.env" <<VERSION
KUBE_GIT_COMMIT=''
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='v${KUBE_VERSION}'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='20'
VERSION
  (cd "$SRC" && CGO_ENABLED=0 KUBE_GIT_VERSION_FILE="$WORK/version.env" KUBE_BUILD_PLATFORMS=linux/amd64 \
    make WHAT="cmd/kube-apiserver" >&2)
  cp "$SRC/_output/bin/kube-apiserver" "$CACHE/kube-apiserver.tmp"
  mv "$CACHE/kube-apiserver.tmp" "$CACHE/kube-apiserver"
  # Keep only the binary; the source tree and build cache are ~2 GB.
  rm -rf "$WORK"
}

[[ -x "$CACHE/kube-apiserver" ]] || build_apiserver
ln -sf "$(command -v etcd)" "$CACHE/etcd"
echo "$CACHE"
