#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` (continuous batching with -np slots), the strongest CPU
# reference for bench/server.py, from the llama.cpp sources vendored in the llama-cpp-python sdist
# pinned by pyproject.toml's bench extra. About 10 minutes on 2 cores; benchmarks only, never CI.
# Result: ~/.cache/llmchain/bench-bin/llama-server, built for this CPU (GGML_NATIVE).
#
#   hack/build-llama-server.sh --portable   builds llama-server-portable instead (GGML_NATIVE=OFF:
#                                           AVX2/FMA/F16C, no AVX-512 or AMX kernels), the
#                                           fallback bench/server.py tries where the native build
#                                           crashes (it segfaults loading this GGUF on some
#                                           AVX-512/AMX CPUs)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { printf '[llama-server] %s\n' "$*"; }
version=$(sed -n 's/.*"llama-cpp-python[^=]*==\([^"]*\)".*/\1/p' pyproject.toml)
out=$HOME/.cache/llmchain/bench-bin
name=llama-server native=ON
case "${1:-}" in
  "") ;;
  --portable) name=llama-server-portable native=OFF ;;
  *) echo "usage: $0 [--portable]" >&2; exit 2 ;;
esac
if [ -x "$out/$name" ]; then say "reusing $out/$name"; exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
log=$out/$name.build.log  # kept after a failure
say "fetching the llama-cpp-python $version sdist"
python3 -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$version"
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
say "configuring $src (log: $log)"
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=$native \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >"$log" 2>&1
say "compiling the llama-server target as $name (GGML_NATIVE=$native, about 10 minutes)"
cmake --build "$work/build" --target llama-server -j "$(nproc)" >>"$log" 2>&1 &
build=$!
while kill -0 "$build" 2>/dev/null; do
  sleep 30
  say "still compiling: $(grep -o '\[[0-9]*/[0-9]*\]' "$log" | tail -1)"
done
wait "$build" || { tail -20 "$log"; say "failed"; exit 1; }
cp "$work/build/bin/llama-server" "$out/$name"
say "built $out/$name"
