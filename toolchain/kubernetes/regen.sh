#!/usr/bin/env bash
# Re-pins the Kubernetes wrapper module to another k8s.io/kubernetes release:
#   toolchain/kubernetes/regen.sh v1.36.3
# Every staging module that release requires at v0.0.0 is replaced by its published v0.<minor>.<patch>.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
version=${1:?usage: regen.sh vMAJOR.MINOR.PATCH}
staging_version="v0.${version#v1.}"
upstream_mod=$(go mod download -json "k8s.io/kubernetes@$version" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
{
  sed -n '1,/^require/{/^require/!p}' go.mod
  printf 'require k8s.io/kubernetes %s\n\ntool (\n' "$version"
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
    printf '\tk8s.io/kubernetes/cmd/%s\n' "$cmd"
  done
  printf ')\n\nreplace (\n'
  for m in $(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$upstream_mod"); do
    # Staging modules that are never published (samples) are not needed by the binaries.
    if go list -m "$m@$staging_version" >/dev/null 2>&1; then
      printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"
    fi
  done
  printf ')\n'
} > go.mod.new
mv go.mod.new go.mod
rm -f go.sum
go mod tidy
echo "pinned k8s.io/kubernetes $version (staging modules at $staging_version)"
