#!/usr/bin/env bash
# `make demo`: the operator, running under its own least-privilege ServiceAccount, turns the
# seed's Q&A chain (examples/01-qa-chain) into a running app on the local cluster; then the pod
# it rendered runs for real as local processes and answers the seed's question.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kubeconfig=$("$root/hack/cluster.sh" kubeconfig)
kubectl() { "$root/.toolchain/bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
step() { printf '\n== %s\n' "$*"; }

step "Control plane $(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') and its processes"
"$root/hack/cluster.sh" processes
kubectl get nodes -o custom-columns='NODE:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,GPUS:.status.allocatable.nvidia\.com/gpu'

step "Optional APIs: Prometheus Operator and KEDA CRDs"
kubectl apply --server-side --force-conflicts -f "$root/.toolchain/crds" | sed 's/^/  /'

step "The operator (CRD, RBAC, leader election)"
"$root/hack/operator.sh" start

step "An LLMChainApp: examples/01-qa-chain in namespace demo (restricted Pod Security)"
# Until the demo runs the app on the real node, its pods go to the KWOK fake nodes (the
# annotations tests/support/cluster.py explains) and the pod is re-run below as local processes.
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl annotate namespace demo --overwrite >/dev/null \
  'scheduler.alpha.kubernetes.io/node-selector=type=kwok' \
  'scheduler.alpha.kubernetes.io/defaultTolerations=[{"key":"kwok.x-k8s.io/node","operator":"Equal","value":"fake","effect":"NoSchedule"}]'
kubectl label namespace demo pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
kubectl -n demo apply -f "$root/examples/01-qa-chain/app.yaml"
printf 'waiting for Ready'
for _ in $(seq 1 60); do
  ready=$(kubectl -n demo get lca qa-chain -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')
  [ "$ready" = True ] && break
  printf '.'; sleep 1
done
echo
kubectl -n demo get lca qa-chain

step "What the operator created (owned by the app, server-side applied)"
kubectl -n demo get deploy,svc,cm,sa,pdb,netpol,servicemonitor,prometheusrule \
  -l app.kubernetes.io/instance=qa-chain

step "Status conditions"
kubectl -n demo get lca qa-chain \
  -o jsonpath='{range .status.conditions[*]}{.type}{"="}{.status}{"  "}{.reason}{": "}{.message}{"\n"}{end}'

"$root/.venv/bin/python" "$root/hack/demo_pod.py" "$kubeconfig" demo qa-chain

cat <<TEXT

The cluster, the operator and the pod's processes keep running:
  export KUBECONFIG=$kubeconfig
  kubectl -n demo edit lca qa-chain      # change the prompt: the Deployment rolls
  llmchain render examples/02-gpu-autoscaled/app.yaml   # offline, what the operator would apply
  make demo-down                         # stop everything the demo started
TEXT
