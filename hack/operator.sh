#!/usr/bin/env bash
# Runs the operator on the local cluster: in the cluster from its image (`install`: the Helm
# chart, two replicas, one leading, on the real node), or as a local process with its own
# least-privilege identity (the chart's RBAC), never as cluster-admin (`start`: what the e2e
# tests of the rendered objects use, through tests/support/operator.py).
#
#   hack/operator.sh install        helm upgrade --install the chart with the images built here
#   hack/operator.sh uninstall      helm uninstall it (waits for its pods to go)
#   hack/operator.sh identity OUT   apply CRD + RBAC, write a kubeconfig with the SA's token to OUT
#   hack/operator.sh start          start `llmchain operator` in the background (idempotent)
#   hack/operator.sh stop           stop it (by PID)
#
# Both take the same leader lease (llmchain-system/llmchain-operator): never two acting at once.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state=${LLMCHAIN_CLUSTER_DIR:-$root/.cluster}
admin=$("$root/hack/cluster.sh" kubeconfig)
kubectl() { "$root/.toolchain/bin/kubectl" --kubeconfig "$admin" "$@"; }
say() { printf '[operator %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

identity() {
  local out=$1 token server ca
  kubectl apply -f "$root/crds" >/dev/null
  kubectl apply -f "$root/deploy/namespace.yaml" >/dev/null
  "$root/hack/render-manifests.sh" --rbac-only | kubectl apply -f - >/dev/null
  kubectl wait --for=condition=Established crd/llmchainapps.llmchain.io --timeout=60s >/dev/null
  token=$(kubectl -n llmchain-system create token llmchain-operator --duration=24h)
  server=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
  # The CA as data, whichever way the admin kubeconfig holds it (inline or as a file).
  ca=$(kubectl config view --raw --minify --flatten \
    -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
  umask 077
  cat > "$out" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: llmchain-operator, user: {token: "$token"}}]
contexts: [{name: operator, context: {cluster: local, user: llmchain-operator}}]
current-context: operator
YAML
}

start() {
  local pidfile=$state/operator.pid
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    say "already running (PID $(cat "$pidfile"), log $state/operator.log)"
    return
  fi
  identity "$state/operator-kubeconfig.yaml"
  KUBECONFIG=$state/operator-kubeconfig.yaml nohup "$root/.venv/bin/llmchain" operator \
    --metrics-port "${LLMCHAIN_METRICS_PORT:-18080}" --liveness-port "${LLMCHAIN_LIVENESS_PORT:-18081}" \
    >"$state/operator.log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 60); do
    if curl -fs "http://127.0.0.1:${LLMCHAIN_LIVENESS_PORT:-18081}/healthz" >/dev/null; then
      say "running as ServiceAccount llmchain-system/llmchain-operator (PID $!, log $state/operator.log)"
      return
    fi
    kill -0 "$!" 2>/dev/null || { tail -n 20 "$state/operator.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "operator did not become live; log: $state/operator.log" >&2; exit 1
}

helm() { "$root/.toolchain/bin/helm" --kubeconfig "$admin" "$@"; }
release=llmchain

# The chart with the images hack/images.sh built (and the node has imported); extra arguments go
# to helm (e.g. --set replicaCount=1).
install() {
  local refs=$root/.images/refs.env operator server redis
  [ -f "$refs" ] || { echo "no images: run 'make images'" >&2; exit 1; }
  operator=$(sed -n 's/^operator=//p' "$refs"); server=$(sed -n 's/^server=//p' "$refs")
  redis=$(sed -n 's/^redis=//p' "$refs")
  kubectl apply -f "$root/crds" >/dev/null
  kubectl apply -f "$root/deploy/namespace.yaml" >/dev/null
  # The operator's own ServiceMonitor, where the Prometheus Operator's CRDs are installed.
  local monitor=false
  kubectl get crd servicemonitors.monitoring.coreos.com >/dev/null 2>&1 && monitor=true
  helm upgrade --install "$release" "$root/charts/llmchain-operator" -n llmchain-system \
    --set image.repository="${operator%:*}" --set image.tag="${operator##*:}" \
    --set image.pullPolicy=Never --set defaults.serverImage="$server" \
    --set defaults.cacheImage="$redis" --set defaults.memoryImage="$redis" \
    --set metrics.serviceMonitor.enabled=$monitor --set metrics.serviceMonitor.interval=10s \
    --wait --timeout 180s "$@" >/dev/null
  say "installed: $(kubectl -n llmchain-system get pods -l app.kubernetes.io/instance=$release \
    -o jsonpath='{range .items[*]}{.metadata.name} on {.spec.nodeName}; {end}')"
}

uninstall() {
  helm status "$release" -n llmchain-system >/dev/null 2>&1 || return 0
  helm uninstall "$release" -n llmchain-system --wait --timeout 120s >/dev/null
  # Its ReplicaSet and pods go after the Deployment (the garbage collector); a reinstall while
  # they go would create a ReplicaSet of the same name whose pods the collector then deletes.
  kubectl -n llmchain-system wait --for=delete replicaset,pod -l "app.kubernetes.io/instance=$release" \
    --timeout=120s >/dev/null 2>&1 || true
  say "uninstalled"
}

stop() {
  local pidfile=$state/operator.pid pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill "$pid" 2>/dev/null; then
    # A graceful stop releases the leader lease; give it 15 s, then SIGKILL.
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    say "stopped"
  fi
  rm -f "$pidfile"
}

case ${1:-} in
  install) shift; install "$@" ;;
  uninstall) uninstall ;;
  identity) identity "${2:?usage: $0 identity OUT}" ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install [HELM ARGS]|uninstall|identity OUT|start|stop" >&2; exit 2 ;;
esac
