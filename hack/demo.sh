#!/usr/bin/env bash
# `make demo`: today it shows the local cluster that `make cluster-up` started and what runs on
# it. Later issues extend it to install the operator and serve a chain.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kubeconfig=$("$root/hack/cluster.sh" kubeconfig)
kubectl() { "$root/.toolchain/bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

echo "== Control plane ($(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])'))"
kubectl get --raw '/readyz?verbose' | tail -n 3
echo
echo "== Nodes (KWOK fake nodes; GPU capacity per node)"
kubectl get nodes -o custom-columns='NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,GPUS:.status.allocatable.nvidia\.com/gpu,TAINTS:.spec.taints[*].key'
echo
echo "== Processes of the local cluster"
"$root/hack/cluster.sh" processes
echo
echo "The cluster keeps running. Use it with:  export KUBECONFIG=$kubeconfig"
echo "Stop it with:                          make cluster-down"
echo "The LLMChainApp operator and chain server arrive with the next issues (see README)."
