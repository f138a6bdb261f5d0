#!/usr/bin/env bash
# The local cluster for tests and the demo: kube-apiserver, etcd, kube-controller-manager,
# kube-scheduler and the KWOK controller, all as local processes from the binaries that
# `make toolchain` built (kwokctl's binary runtime); a real node (hack/node.sh: kubelet,
# containerd, kube-proxy in a network namespace of its own) with CoreDNS, where CPU pods run;
# and fake KWOK nodes (two with nvidia.com/gpu), tainted so only pods that tolerate
# kwok.x-k8s.io/node=fake land there (GPU scheduling and scale tests).
#
#   hack/cluster.sh up          start it (idempotent: a running cluster is left as it is)
#   hack/cluster.sh down        stop every process it started (kwokctl stops them by PID file)
#   hack/cluster.sh kubeconfig  print the kubeconfig path and nothing else
#   hack/cluster.sh status      say whether it is running
#   hack/cluster.sh processes   list the processes it started, by PID
#
# LLMCHAIN_CLUSTER_DIR (default: .cluster in the checkout) holds its state, so two checkouts
# run two independent clusters on random ports.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$root/.toolchain/bin
name=llmchain
export KWOK_WORKDIR=${LLMCHAIN_CLUSTER_DIR:-$root/.cluster}
kubeconfig=$KWOK_WORKDIR/kubeconfig.yaml

say() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

need_toolchain() {
  local b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok kwokctl; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing: run 'make toolchain' first"
  done
}

kubectl() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

is_up() {
  [ -f "$kubeconfig" ] && kubectl get --raw /readyz >/dev/null 2>&1 && "$root/hack/node.sh" status
}

# kwokctl's settings (hack/kwokctl.yaml) with this cluster's veth address and certificate folder.
write_kwokctl_config() {
  local host_ip
  host_ip=$("$root/hack/node.sh" env | sed -n 's/^HOST_IP=//p')
  sed -e "s|@HOST_IP@|$host_ip|g" -e "s|@PKI@|$KWOK_WORKDIR/clusters/$name/pki|g" \
    "$root/hack/kwokctl.yaml" > "$KWOK_WORKDIR/kwokctl.yaml"
}

# kwokctl reads its binaries from these variables; nothing is downloaded.
kwokctl_env() {
  local kube_version etcd_version
  kube_version=$("$bin/kube-apiserver" --version | awk '{print $2}')
  etcd_version=$("$bin/etcd" --version | awk '/etcd Version/ {print $3}')
  export KWOK_RUNTIME=binary KWOK_KUBE_VERSION=$kube_version KWOK_ETCD_VERSION=$etcd_version
  export KWOK_KUBE_BINARY_PREFIX=$bin KWOK_KUBECTL_BINARY=$bin/kubectl
  export KWOK_CONTROLLER_BINARY=$bin/kwok KWOK_ETCD_BINARY=$bin/etcd
}

# Fake nodes: KWOK keeps them Ready and runs their pods' lifecycle. The GPU nodes carry the
# taint and labels GPU node pools have on managed clouds, so only pods that ask for a GPU land there;
# the edge node carries the label examples/03-edge-cpu selects. Capacity is large on purpose:
# scale tests and benchmarks run hundreds of pods, and nothing real runs in them.
apply_nodes() {
  local node gpus
  for spec in gpu-node-0:4 gpu-node-1:2 cpu-node-0:0 edge-node-0:0; do
    node=${spec%%:*} gpus=${spec##*:}
    {
      cat <<YAML
apiVersion: v1
kind: Node
metadata:
  name: $node
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels:
    kubernetes.io/hostname: $node
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
YAML
      [ "$gpus" -gt 0 ] && printf '    nvidia.com/gpu.present: "true"\n'
      [ "${node%%-*}" = edge ] && printf '    node-role.llmchain.io/edge: "true"\n'
      printf 'spec:\n  taints:\n  - {key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}\n'
      [ "$gpus" -gt 0 ] && printf '  - {key: nvidia.com/gpu, value: present, effect: NoSchedule}\n'
      cat <<YAML
status:
  allocatable: {cpu: "1000", memory: 4Ti, pods: "2000", nvidia.com/gpu: "$gpus"}
  capacity: {cpu: "1000", memory: 4Ti, pods: "2000", nvidia.com/gpu: "$gpus"}
  nodeInfo: {kubeletVersion: fake, operatingSystem: linux, architecture: amd64}
YAML
    } | kubectl apply --server-side --field-manager=llmchain-cluster -f - >/dev/null
  done
}

# What keeps pods off the nodes: their taints, their pressure conditions, the scheduler's events.
why_not_scheduled() {
  kubectl get nodes -o go-template='{{range .items}}node {{.metadata.name}}: taints [{{range .spec.taints}}{{.key}}:{{.effect}} {{end}}] conditions [{{range .status.conditions}}{{if eq .status "True"}}{{.type}}: {{.message}}; {{end}}{{end}}]{{"\n"}}{{end}}' 2>&1
  kubectl -n "$1" get events --field-selector reason=FailedScheduling \
    -o go-template='{{range .items}}{{.involvedObject.name}}: {{.message}}{{"\n"}}{{end}}' 2>&1
}

apply_coredns() {
  local image
  image=$(sed -n 's/^coredns=//p' "$root/.images/refs.env")
  sed "s|@IMAGE@|$image|" "$root/hack/coredns.yaml" \
    | kubectl apply --server-side --field-manager=llmchain-cluster -f - >/dev/null
  kubectl -n kube-system rollout status deployment/coredns --timeout=120s >/dev/null \
    || die "CoreDNS did not become ready: $(kubectl -n kube-system get pods -l k8s-app=kube-dns -o wide 2>&1)
$(why_not_scheduled kube-system)"
}

up() {
  need_toolchain
  if is_up; then
    say "already running (kubeconfig: $kubeconfig)"
    return
  fi
  kwokctl_env
  "$root/hack/node.sh" check
  mkdir -p "$KWOK_WORKDIR"
  # A stopped, half-created or killed cluster from an earlier run is removed first.
  "$bin/kwokctl" delete cluster --name "$name" >/dev/null 2>&1 || true
  "$root/hack/node.sh" clean
  "$root/hack/node.sh" net-up
  write_kwokctl_config
  say "starting kube-apiserver $KWOK_KUBE_VERSION, etcd $KWOK_ETCD_VERSION, controller-manager, scheduler, kwok"
  local start=$SECONDS
  "$bin/kwokctl" create cluster --name "$name" --runtime binary \
    --kube-authorization=true --kube-admission=true --config "$KWOK_WORKDIR/kwokctl.yaml" \
    --kubeconfig "$kubeconfig" --wait 5m --timeout 10m \
    >"$KWOK_WORKDIR/create.log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 2
    (( (SECONDS - start) % 20 == 0 )) && say "still starting ($((SECONDS - start))s)"
  done
  if ! wait "$pid"; then
    tail -n 30 "$KWOK_WORKDIR/create.log" >&2
    die "cluster did not start; log: $KWOK_WORKDIR/create.log (component logs: $("$bin/kwokctl" get components --name "$name" >/dev/null 2>&1; echo "$KWOK_WORKDIR/clusters/$name/logs"))"
  fi
  apply_nodes
  "$root/hack/node.sh" up
  apply_coredns
  kubectl wait --for=condition=Ready node --all --timeout=120s >/dev/null
  say "up in $((SECONDS - start))s; kubeconfig: $kubeconfig"
}

down() {
  "$root/hack/operator.sh" stop 2>/dev/null || true
  "$root/hack/node.sh" down
  if [ ! -d "$KWOK_WORKDIR/clusters/$name" ]; then
    say "not running"
    return
  fi
  [ -x "$bin/kwokctl" ] || die "$bin/kwokctl is missing: run 'make toolchain' first"
  "$bin/kwokctl" delete cluster --name "$name" >"$KWOK_WORKDIR/delete.log" 2>&1 \
    || { tail -n 20 "$KWOK_WORKDIR/delete.log" >&2; die "could not delete the cluster; log: $KWOK_WORKDIR/delete.log"; }
  rm -f "$kubeconfig"
  say "stopped"
}

# One line per process the cluster started: kwokctl's PID files, then the real node's.
processes() {
  local pidfile pid
  printf '%-24s %-8s %s\n' COMPONENT PID STATE
  for pidfile in "$KWOK_WORKDIR/clusters/$name/pids"/*.pid "$KWOK_WORKDIR/node/pids"/{containerd,kubelet,kube-proxy}.pid; do
    [ -f "$pidfile" ] || { say "not running"; return 1; }
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" | cut -c1)" != Z ]; then
      printf '%-24s %-8s %s\n' "$(basename "$pidfile" .pid)" "$pid" "running for $(ps -o etime= -p "$pid" | tr -d ' ')"
    else
      printf '%-24s %-8s %s\n' "$(basename "$pidfile" .pid)" "$pid" "not running"
    fi
  done
}

case ${1:-} in
  up) up ;;
  down) down ;;
  kubeconfig) printf '%s\n' "$kubeconfig" ;;
  processes) processes ;;
  status) if is_up; then echo running; else echo stopped; exit 1; fi ;;
  *) echo "usage: $0 up|down|kubeconfig|status|processes" >&2; exit 2 ;;
esac
