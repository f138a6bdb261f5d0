#!/usr/bin/env bash
# The monitoring stack of the local cluster, as pods on the real node from images built here
# (hack/images.sh): the Prometheus Operator (with its config reloader) and one Prometheus it runs,
# which selects every ServiceMonitor and PrometheusRule in the cluster; KEDA's operator and
# metrics API server (external.metrics.k8s.io, an aggregated API), which the apps' ScaledObjects
# use. The upstream manifests come from the pinned modules (toolchain/build.sh crds), rendered with
# hack/monitoring/kustomization.yaml; hack/monitoring/prometheus.yaml is the Prometheus.
#
#   hack/monitoring.sh up       install it (idempotent) and wait until Prometheus answers and
#                               the external metrics API is served
#   hack/monitoring.sh down     remove it (the CRDs stay)
#   hack/monitoring.sh url      print Prometheus' URL as this host reaches it (its pod address)
#   hack/monitoring.sh status   exit 0 when it is installed and Prometheus answers
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
admin=$("$root/hack/cluster.sh" kubeconfig)
manifests=$root/.toolchain/manifests
kubectl() { "$root/.toolchain/bin/kubectl" --kubeconfig "$admin" "$@"; }
say() { printf '[monitoring %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[monitoring] ERROR: %s\n' "$*" >&2; exit 1; }

image() { # NAME
  local r
  r=$(sed -n "s/^$1=//p" "$root/.images/refs.env" 2>/dev/null)
  [ -n "$r" ] || die "image '$1' is not built: run 'make images'"
  printf '%s' "$r"
}

# The upstream parts with the images built here, without their CRDs (the CRDs are applied from
# .toolchain/crds as they ship, so a later apply of that folder never fights this one).
render() {
  local work operator reloader keda
  # Assigned first: a missing image stops here (set -e), not as an empty image in the apply.
  operator=$(image prometheus-operator); reloader=$(image prometheus-config-reloader)
  keda=$(image keda)
  [ -d "$manifests/keda" ] && [ -d "$manifests/prometheus-operator" ] \
    || die "the upstream manifests are missing: run 'make toolchain'"
  work=$(mktemp -d)
  cp "$root/hack/monitoring/kustomization.yaml" "$work/"
  cp -rL "$manifests/prometheus-operator" "$manifests/keda" "$work/"
  kubectl kustomize "$work" \
    | sed -e "s|@PROMETHEUS_OPERATOR_IMAGE@:[A-Za-z0-9._-]*|$operator|g" \
          -e "s|@PROMETHEUS_CONFIG_RELOADER_IMAGE@|$reloader|g" \
          -e "s|@KEDA_IMAGE@:[A-Za-z0-9._-]*|$keda|g" \
    | "$root/.venv/bin/python" -c 'import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d and d["kind"] != "CustomResourceDefinition"]
yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)'
  rm -rf "$work"
}

prometheus_version() {
  "$root/.toolchain/bin/prometheus" --version 2>&1 | awk 'NR == 1 {print "v" $3}'
}

url() {
  local ip
  ip=$(kubectl -n monitoring get pod prometheus-llmchain-0 -o jsonpath='{.status.podIP}' 2>/dev/null) \
    || die "Prometheus is not running: run 'make monitoring'"
  [ -n "$ip" ] || die "Prometheus has no address yet"
  printf 'http://%s:9090\n' "$ip"
}

ready() {
  local u
  u=$(url 2>/dev/null) && curl -fsS --max-time 3 "$u/-/ready" >/dev/null 2>&1
}

wait_for() { # WHAT SECONDS CMD...
  local what=$1 limit=$2 start=$SECONDS next=$((SECONDS + 20)); shift 2
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - start < limit )) || return 1
    if (( SECONDS >= next )); then say "waiting for $what ($((SECONDS - start))s)"; next=$((SECONDS + 20)); fi
    sleep 2
  done
}

up() {
  local start=$SECONDS rendered prometheus version
  rendered=$(render)
  prometheus=$(image prometheus); version=$(prometheus_version)
  say "applying the monitoring.coreos.com and keda.sh CRDs (server-side)"
  kubectl apply --server-side --force-conflicts --field-manager=llmchain-monitoring \
    -f "$root/.toolchain/crds" >/dev/null
  kubectl wait --for=condition=Established -f "$root/.toolchain/crds" --timeout=60s >/dev/null
  kubectl create namespace monitoring --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  say "installing the Prometheus Operator and KEDA (operator, metrics API server)"
  kubectl apply --server-side --force-conflicts --field-manager=llmchain-monitoring -f - \
    <<<"$rendered" >/dev/null
  kubectl -n monitoring rollout status deployment/prometheus-operator --timeout=180s >/dev/null \
    || die "the Prometheus Operator did not start: $(kubectl -n monitoring get pods -o wide 2>&1)"
  say "creating Prometheus $version (the Prometheus Operator runs it)"
  sed -e "s|@PROMETHEUS_IMAGE@|$prometheus|" -e "s|@PROMETHEUS_VERSION@|$version|" \
    "$root/hack/monitoring/prometheus.yaml" \
    | kubectl apply --server-side --force-conflicts --field-manager=llmchain-monitoring -f - >/dev/null
  wait_for "Prometheus to answer" 240 ready \
    || die "Prometheus did not become ready: $(kubectl -n monitoring get pods -o wide 2>&1)"
  kubectl -n keda rollout status deployment/keda-operator --timeout=180s >/dev/null \
    || die "KEDA's operator did not start: $(kubectl -n keda get pods -o wide 2>&1)"
  kubectl -n keda rollout status deployment/keda-metrics-apiserver --timeout=180s >/dev/null \
    || die "KEDA's metrics API server did not start: $(kubectl -n keda get pods -o wide 2>&1)"
  wait_for "the external metrics API (KEDA)" 180 kubectl get --raw /apis/external.metrics.k8s.io/v1beta1 \
    || die "the external metrics API is not served: $(kubectl get apiservice v1beta1.external.metrics.k8s.io -o yaml 2>&1 | tail -20)"
  say "up in $((SECONDS - start))s; Prometheus at $(url) (in the cluster: http://prometheus.monitoring.svc:9090)"
}

down() {
  local scaled rendered
  # KEDA removes its finalizer from a ScaledObject being deleted: without KEDA, the object and
  # its namespace would stay Terminating. Delete the autoscaled apps (or their autoscaling) first.
  scaled=$(kubectl get scaledobjects.keda.sh -A --no-headers \
    -o custom-columns=NS:.metadata.namespace,NAME:.metadata.name 2>/dev/null | tr -s ' ' '/' || true)
  [ -z "$scaled" ] || die "ScaledObjects still exist (KEDA must finalize them first): $scaled"
  rendered=$(render)
  # The aggregated API first: while it is registered and unserved, namespaces cannot be deleted.
  kubectl delete apiservice v1beta1.external.metrics.k8s.io --ignore-not-found >/dev/null
  kubectl -n monitoring delete prometheus llmchain --ignore-not-found --timeout=120s >/dev/null 2>&1 || true
  kubectl delete --ignore-not-found --timeout=120s -f - <<<"$rendered" >/dev/null
  kubectl delete namespace monitoring keda --ignore-not-found --timeout=180s >/dev/null
  say "removed"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  url) url ;;
  status) ready ;;
  *) echo "usage: $0 up|down|url|status" >&2; exit 2 ;;
esac
