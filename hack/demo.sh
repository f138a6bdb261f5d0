#!/usr/bin/env bash
# `make demo`: the operator, installed with Helm from the image built here and running in the
# local cluster, turns the seed's Q&A chain (examples/01-qa-chain) into real pods on the real
# node: the init container builds the model from a URL served in the cluster, the server passes
# its real probes, and the seed's question is answered through the Service; Prometheus, run by
# the Prometheus Operator from the app's ServiceMonitor, then shows the live numbers.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kubeconfig=$("$root/hack/cluster.sh" kubeconfig)
kubectl() { "$root/.toolchain/bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
step() { printf '\n== %s\n' "$*"; }
ref() { sed -n "s/^$1=//p" "$root/.images/refs.env"; }
forward_pid=""
trap '[ -z "$forward_pid" ] || kill "$forward_pid" 2>/dev/null || true' EXIT

step "Control plane $(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') and its processes"
"$root/hack/cluster.sh" processes
kubectl get nodes -o custom-columns='NODE:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,RUNTIME:.status.nodeInfo.containerRuntimeVersion,IP:.status.addresses[0].address,GPUS:.status.allocatable.nvidia\.com/gpu'
echo "(the KWOK nodes are fake and tainted: only GPU-scheduling and scale tests use them)"

step "Images built here without a daemon (hack/images.sh), imported into the node's containerd"
sed 's/^/  /' "$root/.images/refs.env"

step "Monitoring (make monitoring): Prometheus, run by the Prometheus Operator, and KEDA, built here"
"$root/hack/monitoring.sh" up
kubectl get pods -n monitoring -o wide; kubectl get pods -n keda -o wide

step "The operator in the cluster: helm install, two replicas, one leading"
"$root/hack/operator.sh" stop >/dev/null  # a local one from an older demo would share the lease
"$root/hack/operator.sh" install
kubectl -n llmchain-system get pods -o wide
printf 'leader: '
for _ in $(seq 1 60); do
  holder=$(kubectl -n llmchain-system get lease llmchain-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
  [ -n "$holder" ] && kubectl -n llmchain-system get pods -o name | grep -q "${holder%-*-*}" && break
  sleep 1
done
echo "${holder:-none yet}"

step "The model's URL, served in the cluster: http://models.llmchain.local (CoreDNS → Service)"
sed -e "s|@MODEL_IMAGE@|$(ref model)|" \
    -e "s|@SHA256@|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53|" \
    -e "s|@EMBEDDING_SHA256@|0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592|" \
    "$root/hack/model-files.yaml" | kubectl apply -f - | sed 's/^/  /'
kubectl -n llmchain-hosts rollout status deployment/models --timeout=120s | sed 's/^/  /'

step "An LLMChainApp: examples/01-qa-chain in namespace demo (restricted Pod Security)"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace demo pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
kubectl -n demo apply -f "$root/examples/01-qa-chain/app.yaml"
printf 'waiting for its pod'
pod=""
for _ in $(seq 1 60); do
  pod=$(kubectl -n demo get pods -l app.kubernetes.io/instance=qa-chain,app.kubernetes.io/component=server \
    --sort-by=.metadata.creationTimestamp -o jsonpath='{.items[-1:].metadata.name}' 2>/dev/null || true)
  [ -n "$pod" ] && break
  printf '.'; sleep 1
done
echo " $pod"
echo "the init container builds the model (its log):"
for _ in $(seq 1 60); do
  kubectl -n demo logs "$pod" -c model >/dev/null 2>&1 && break
  sleep 1
done
kubectl -n demo logs -f "$pod" -c model 2>&1 | sed 's/^/  /' || true
printf 'waiting for Ready (the server'"'"'s real readiness probe)'
for _ in $(seq 1 180); do
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

"$root/.venv/bin/python" "$root/hack/demo_prometheus.py" "$("$root/hack/monitoring.sh" url)" \
  "$root/examples/01-qa-chain/app.yaml" demo --first-scrape "$pod"

step "kubectl port-forward service/qa-chain (the Service's port 80)"
log=$(mktemp)
kubectl -n demo port-forward --address 127.0.0.1 service/qa-chain :80 >"$log" 2>&1 &
forward_pid=$!
for _ in $(seq 1 50); do grep -q 'Forwarding from' "$log" && break; sleep 0.2; done
port=$(sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\).*/\1/p' "$log" | head -1)
[ -n "$port" ] || { cat "$log" >&2; exit 1; }
echo "  http://127.0.0.1:$port → qa-chain.demo.svc:80"
"$root/.venv/bin/python" "$root/hack/demo_ask.py" "http://127.0.0.1:$port" qa-chain

step "Live numbers from Prometheus (it scraped the app through the ServiceMonitor the operator made)"
"$root/.venv/bin/python" "$root/hack/demo_prometheus.py" "$("$root/hack/monitoring.sh" url)" \
  "$root/examples/01-qa-chain/app.yaml" demo

step "The real pods: containers, restarts, IPs"
kubectl -n demo get pods -o wide
kubectl -n demo get pods -o jsonpath='{range .items[*]}{.metadata.name}{range .status.initContainerStatuses[*]}{"\n  "}{.name}{": "}{.containerID}{" restarts="}{.restartCount}{end}{range .status.containerStatuses[*]}{"\n  "}{.name}{": "}{.containerID}{" restarts="}{.restartCount}{end}{"\n"}{end}'

cat <<TEXT

The cluster, the operator and the app keep running:
  export KUBECONFIG=$kubeconfig
  kubectl -n demo edit lca qa-chain      # change the prompt: the Deployment rolls, for real
  kubectl -n demo port-forward service/qa-chain 8000:80
  llmchain render examples/02-gpu-autoscaled/app.yaml   # offline, what the operator would apply
  curl "$("$root/hack/monitoring.sh" url)/api/v1/alerts"   # Prometheus' API (alerts, queries)
  make demo-down                         # stop everything the demo started
TEXT
