#!/usr/bin/env bash
# The local cluster's real node, like a kind node without Docker: containerd (+ Debian's runc),
# kubelet, kube-proxy (nftables mode) and the CNI plugins run inside a network namespace of their
# own, joined to the host by a veth pair, and a private mount namespace (see DESIGN.md and
# notes/real-node-spike.md). Nothing is added to the host's nftables/iptables; the host gets one
# route (the pod CIDR through the veth, so the API server reaches pods) that `down` removes.
#
#   hack/node.sh check         fail at once, naming it, when the machine lacks a capability
#   hack/node.sh clean         remove what a killed run left (processes, cgroups, route, veth, netns)
#   hack/node.sh net-up        create the network namespace and veth (before the API server starts)
#   hack/node.sh up            start the node against the running control plane, wait for Ready
#   hack/node.sh down          stop every node and pod process, remove everything `up` created
#   hack/node.sh status        exit 0 when the node's processes run
#   hack/node.sh env           print the node's addresses and names (NAME=VALUE lines)
#   hack/node.sh exec CMD...   run CMD in the node's network and mount namespaces (ctr, nft, ...)
#   hack/node.sh load [NAME..] import built images (hack/images.sh) into the node's containerd
#   hack/node.sh leftovers     print what of the node exists on the host (empty when clean)
#
# Every name and address derives from LLMCHAIN_CLUSTER_DIR, so two checkouts get two nodes.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$root/.toolchain/bin
workdir=${LLMCHAIN_CLUSTER_DIR:-$root/.cluster}
state=$workdir/node
kwok_dir=$workdir/clusters/llmchain
admin_kubeconfig=$workdir/kubeconfig.yaml

# Names and addresses, from a hash of the cluster folder.
hash=$(printf '%s' "$workdir" | sha256sum | cut -c1-6)
octet=$(( 16#${hash:0:2} % 250 + 1 ))
node_name=real-node-0
netns=llmchain-$hash
veth_host=lc$hash-h                   # 9 characters; the node's end is renamed eth0 inside
host_ip=10.201.$octet.1
node_ip=10.201.$octet.2
pod_cidr=10.202.$octet.0/24
service_cidr=10.96.0.0/16
dns_ip=10.96.0.10
cgroup_root=llmchain-$hash
sysctl_shadows="vm/overcommit_memory=1 kernel/panic=10 kernel/panic_on_oops=1"
# Paths inside the node's mount namespace, where /run is $state/run.
sock=/run/containerd/containerd.sock
kubelet_dir=/run/kubelet

say() { printf '[node %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[node] ERROR: %s\n' "$*" >&2; exit 1; }
kubectl() { "$bin/kubectl" --kubeconfig "$admin_kubeconfig" "$@"; }

env_lines() {
  cat <<ENV
NODE_NAME=$node_name
NETNS=$netns
VETH_HOST=$veth_host
HOST_IP=$host_ip
NODE_IP=$node_ip
POD_CIDR=$pod_cidr
SERVICE_CIDR=$service_cidr
DNS_IP=$dns_ip
CGROUP_ROOT=$cgroup_root
STATE=$state
ENV
}

# --- capabilities -------------------------------------------------------------------------------
check() {
  [ "$(id -u)" = 0 ] || die "the real node needs root (network namespaces, mounts, cgroups)"
  local b
  for b in kubelet kube-proxy containerd containerd-shim-runc-v2 ctr; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing: run 'make toolchain' first"
  done
  for b in bridge host-local loopback portmap; do
    [ -x "$root/.toolchain/cni/$b" ] || die "CNI plugin $b is missing: run 'make toolchain' first"
  done
  command -v runc >/dev/null || die "runc is missing: run 'make install' (Debian's runc)"
  command -v nft >/dev/null || die "nft is missing: run 'make install' (Debian's nftables)"
  for b in ip nsenter unshare mount; do command -v "$b" >/dev/null || die "$b is missing"; done
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null \
    || die "this kernel has no overlayfs (containerd's snapshotter needs it)"
  [ -e /proc/self/ns/net ] || die "this kernel has no network namespaces"
  local probe=llmchain-probe-$$
  ip netns add "$probe" 2>/dev/null || die "cannot create a network namespace (ip netns add)"
  ip netns del "$probe"
  [ -d /sys/fs/cgroup/memory ] && [ -d /sys/fs/cgroup/cpu ] && [ -d /sys/fs/cgroup/pids ] \
    || die "cgroup v1 hierarchies memory, cpu and pids are needed under /sys/fs/cgroup"
  nft list tables >/dev/null 2>&1 || die "nftables does not work here (nft list tables failed)"
}

# --- processes ----------------------------------------------------------------------------------
# Every process of the node lives in its network namespace; every pod process in its cgroups.
node_pids() { ip netns pids "$netns" 2>/dev/null || true; }
pod_pids() {
  local f
  for f in $(find /sys/fs/cgroup/*/"$cgroup_root" -name cgroup.procs 2>/dev/null); do cat "$f" 2>/dev/null || true; done \
    | sort -un
}

kill_all() { # SIGNAL PID...
  local sig=$1; shift
  [ $# -eq 0 ] || kill "-$sig" "$@" 2>/dev/null || true
}

stop_processes() {
  local pids
  # kubelet and kube-proxy first, so nothing restarts pods while they go.
  for name in kubelet kube-proxy; do
    [ -f "$state/pids/$name.pid" ] && kill_all TERM "$(cat "$state/pids/$name.pid")"
  done
  mapfile -t pids < <(pod_pids); kill_all KILL "${pids[@]}"
  mapfile -t pids < <(node_pids); kill_all TERM "${pids[@]}"
  for _ in $(seq 1 50); do
    mapfile -t pids < <(node_pids; pod_pids)
    [ ${#pids[@]} -eq 0 ] && break
    sleep 0.1
  done
  mapfile -t pids < <(node_pids; pod_pids); kill_all KILL "${pids[@]}"
  for _ in $(seq 1 50); do
    mapfile -t pids < <(node_pids; pod_pids)
    [ ${#pids[@]} -eq 0 ] && break
    sleep 0.1
  done
  mapfile -t pids < <(node_pids; pod_pids)
  [ ${#pids[@]} -eq 0 ] || die "processes of the node survived SIGKILL: ${pids[*]}"
  rm -f "$state"/pids/*.pid
}

remove_cgroups() {
  local dir
  # Depth first; a cgroup whose last process just died may need a moment to empty.
  for _ in $(seq 1 50); do
    for dir in $(find /sys/fs/cgroup/*/"$cgroup_root" -depth -type d 2>/dev/null); do
      rmdir "$dir" 2>/dev/null || true
    done
    compgen -G "/sys/fs/cgroup/*/$cgroup_root" >/dev/null || return 0
    sleep 0.1
  done
  die "could not remove the node's cgroups: $(compgen -G "/sys/fs/cgroup/*/$cgroup_root" | tr '\n' ' ')"
}

remove_network() {
  ip route del "$pod_cidr" 2>/dev/null || true
  ip link del "$veth_host" 2>/dev/null || true
  ip netns del "$netns" 2>/dev/null || true
}

leftovers() {
  local pids
  mapfile -t pids < <(node_pids; pod_pids)
  [ ${#pids[@]} -eq 0 ] || echo "processes: ${pids[*]}"
  ip netns list 2>/dev/null | grep -qw "$netns" && echo "network namespace: $netns"
  ip link show "$veth_host" >/dev/null 2>&1 && echo "veth: $veth_host"
  ip route show "$pod_cidr" 2>/dev/null | grep -q . && echo "route: $pod_cidr"
  compgen -G "/sys/fs/cgroup/*/$cgroup_root" >/dev/null && echo "cgroups: /sys/fs/cgroup/*/$cgroup_root"
  grep -F " $state/" /proc/self/mountinfo | awk '{print "mount: " $5}' || true
  true
}

clean() {
  stop_processes
  remove_cgroups
  remove_network
  # Runtime state only: the content store (imported images) is kept for the next start.
  rm -rf "$state/containerd/state" "$state/run" "$state/log" "$state/cni-ipam" \
    "$state/varlog" "$state/volumes"
}

# --- network and cgroups ------------------------------------------------------------------------
net_up() {
  if ip -o -4 addr show | grep -q " 10\.201\.$octet\.[12]/"; then
    die "10.201.$octet.0/30 is already in use on this host (another cluster folder hashing alike?)"
  fi
  ip netns add "$netns"
  ip link add "$veth_host" type veth peer name "lc$hash-n"
  ip link set "lc$hash-n" netns "$netns"
  ip -n "$netns" link set "lc$hash-n" name eth0
  ip addr add "$host_ip/30" dev "$veth_host"
  ip link set "$veth_host" up
  ip -n "$netns" addr add "$node_ip/30" dev eth0
  ip -n "$netns" link set eth0 up
  ip -n "$netns" link set lo up
  ip -n "$netns" route add default via "$host_ip"
  # Forwarding inside the node's namespace only; the host's net.ipv4.ip_forward is untouched.
  nsenter --net="/run/netns/$netns" sysctl -qw net.ipv4.ip_forward=1
  ip route add "$pod_cidr" via "$node_ip" dev "$veth_host"
}

cgroups_up() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [ "$(basename "$h")" = unified ] && continue
    mkdir -p "$h$cgroup_root"
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" > "$h$cgroup_root/cpuset.cpus"
      cat "$h/cpuset.mems" > "$h$cgroup_root/cpuset.mems"
    fi
  done
}

# --- PKI and configuration ----------------------------------------------------------------------
# Client certificates signed by the control plane's CA (kwokctl's), with openssl.
client_cert() { # NAME CN ORG
  local name=$1 cn=$2 org=$3 subj
  subj="/CN=$cn"; [ -z "$org" ] || subj="/O=$org/CN=$cn"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$state/pki/$name.key" -subj "$subj" \
    -out "$state/pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$state/pki/$name.csr" -CA "$kwok_dir/pki/ca.crt" -CAkey "$kwok_dir/pki/ca.key" \
    -CAcreateserial -days 30 -out "$state/pki/$name.crt" \
    -extfile <(printf 'keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n') 2>/dev/null
  rm -f "$state/pki/$name.csr"
  local port
  port=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}' | sed 's/.*://')
  cat > "$state/pki/$name.kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://$host_ip:$port", certificate-authority: "$kwok_dir/pki/ca.crt"}}]
users: [{name: $name, user: {client-certificate: "$state/pki/$name.crt", client-key: "$state/pki/$name.key"}}]
contexts: [{name: $name, context: {cluster: local, user: $name}}]
current-context: $name
YAML
}

write_configs() {
  mkdir -p "$state"/{pki,etc,cni-conf,pids,logs,containerd/root,containerd/state,run,varlog,sysctl,cni-ipam}
  client_cert kubelet "system:node:$node_name" system:nodes
  client_cert kube-proxy system:kube-proxy ""
  cat > "$state/etc/containerd.toml" <<TOML
version = 3
root = "$state/containerd/root"
state = "$state/containerd/state"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs"]

# Sockets live under /run of the node's mount namespace ($state/run): unix socket paths are
# limited to 104 bytes, and a cluster folder can be deep.
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "$(ref pause)"
  [plugins.'io.containerd.cri.v1.runtime']
    netns_mounts_under_state_dir = true
    # Root here lacks CAP_SYS_RESOURCE, so runc cannot set a negative oom_score_adj: clamp to 0.
    restrict_oom_score_adj = true
    enable_unprivileged_ports = true
    enable_unprivileged_icmp = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "$(command -v runc)"
          Root = "$state/containerd/runc"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["$root/.toolchain/cni"]
      conf_dir = "$state/cni-conf"
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
TOML
  cat > "$state/cni-conf/10-llmchain.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "llmchain",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "hairpinMode": true,
     "ipMasq": true, "ipMasqBackend": "nftables",
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$state/cni-ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}, "backend": "nftables"}
  ]
}
JSON
  printf 'nameserver %s\noptions ndots:5\n' "$dns_ip" > "$state/etc/resolv.conf"
  cat > "$state/etc/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$cgroup_root
containerRuntimeEndpoint: unix://$sock
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $kwok_dir/pki/ca.crt}
authorization: {mode: AlwaysAllow}
# With the sysctl shadows below, the kubelet reads these kernel settings instead of writing them.
protectKernelDefaults: true
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: [$dns_ip]
resolvConf: $state/etc/resolv.conf
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
maxPods: 110
YAML
  cat > "$state/etc/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {kubeconfig: $state/pki/kube-proxy.kubeconfig}
hostnameOverride: $node_name
clusterCIDR: $pod_cidr
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$node_ip/32"]
# No global conntrack sysctl is written.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
}

ref() { # IMAGE
  local r
  r=$(grep "^$1=" "$root/.images/refs.env" 2>/dev/null | cut -d= -f2-) || true
  [ -n "$r" ] || die "image '$1' is not built: run 'make images' first"
  printf '%s' "$r"
}

# --- inside the node's namespaces ---------------------------------------------------------------
# Runs as the first process of the node's private mount namespace (entered with nsenter --net and
# unshare --mount, never `ip netns exec`, which remounts /sys and hides the cgroups).
inside() {
  # Paths containerd and the kubelet hard-wire (/run/containerd/s, /var/log/containers), and
  # the kernel settings the kubelet would otherwise write, are shadowed in this mount namespace.
  mount --bind "$state/run" /run
  mount --bind "$state/varlog" /var/log
  local kv key file
  for kv in $sysctl_shadows; do
    key=${kv%%=*}; file=$state/sysctl/${key//\//.}
    printf '%s\n' "${kv#*=}" > "$file"
    mount --bind "$file" "/proc/sys/$key"
  done
  start_daemon containerd "$bin/containerd" --config "$state/etc/containerd.toml"
  for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.1; done
  # Containers and sandboxes of an earlier cluster's pods (their processes are gone) are
  # dropped before the kubelet starts; the imported images stay.
  local c kind
  for kind in containers sandboxes; do
    for c in $("$bin/ctr" --address "$sock" -n k8s.io "$kind" ls -q 2>/dev/null); do
      "$bin/ctr" --address "$sock" -n k8s.io "$kind" rm "$c" >/dev/null 2>&1 || true
    done
  done
  start_daemon kubelet "$bin/kubelet" --config="$state/etc/kubelet.yaml" \
    --kubeconfig="$state/pki/kubelet.kubeconfig" --hostname-override="$node_name" \
    --node-ip="$node_ip" --root-dir="$kubelet_dir" --cert-dir="$kubelet_dir/pki" \
    --node-labels="llmchain.io/node=real,node-role.llmchain.io/edge=true" --v=1
  start_daemon kube-proxy "$bin/kube-proxy" --config="$state/etc/kube-proxy.yaml" --v=1
  # This shell holds the namespace for `exec`; it waits for its daemons.
  echo $$ > "$state/pids/holder.pid"
  wait
}

start_daemon() { # NAME CMD...
  local name=$1; shift
  "$@" >"$state/logs/$name.log" 2>&1 </dev/null &
  echo $! > "$state/pids/$name.pid"
}

containerd_pid() {  # it lives in both of the node's namespaces
  local pid
  pid=$(cat "$state/pids/containerd.pid" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  printf '%s' "$pid"
}

node_exec() {
  local pid
  pid=$(containerd_pid) || die "the node is not running"
  nsenter -t "$pid" -n -m -- "$@"
}

ctr() { node_exec "$bin/ctr" --address "$sock" -n k8s.io "$@"; }

# --- images -------------------------------------------------------------------------------------
load() { # [NAME...]
  local names=("$@") n r archive have start=$SECONDS
  if [ ${#names[@]} -eq 0 ]; then
    mapfile -t names < <(cut -d= -f1 "$root/.images/refs.env" 2>/dev/null)
  fi
  have=$(ctr images ls -q 2>/dev/null || true)
  for n in "${names[@]}"; do
    r=$(ref "$n")
    if grep -qxF "$r" <<<"$have"; then continue; fi
    archive=$("$root/hack/images.sh" archive "$n")
    [ -f "$archive" ] || die "image '$n' has no archive at $archive: run 'make images'"
    say "importing $r"
    ctr images import "$archive" >/dev/null 2>"$state/logs/import.log" \
      || { cat "$state/logs/import.log" >&2; die "could not import $archive"; }
  done
  say "images loaded in $((SECONDS - start))s"
}

# --- up / down ----------------------------------------------------------------------------------
status() {
  local name pid
  for name in containerd kubelet kube-proxy; do
    pid=$(cat "$state/pids/$name.pid" 2>/dev/null) || return 1
    kill -0 "$pid" 2>/dev/null || return 1
  done
}

# The kubelet taints the node and schedules nothing once its disk is 99% full (evictionHard
# below), and the images alone take several GiB: say so before starting, not as Pending pods.
check_disk() {
  mkdir -p "$state"
  local free_gib free_pct
  read -r free_gib free_pct < <(df -Pk "$state" | awk 'NR == 2 {print int($4 / 1048576), int(100 * $4 / $2)}')
  [ "$free_gib" -ge 4 ] \
    || die "only ${free_gib} GiB free on the disk of $state; the real node needs at least 4 GiB (its images and pod volumes)"
  [ "$free_pct" -ge 2 ] \
    || die "only ${free_pct}% of the disk of $state is free; the kubelet schedules nothing below 1%"
  [ "$free_gib" -ge 12 ] \
    || say "warning: only ${free_gib} GiB free on the disk of $state; the kubelet stops scheduling when it is 99% full"
}

up() {
  [ -f "$admin_kubeconfig" ] || die "the control plane is not running (hack/cluster.sh up starts both)"
  ip netns list | grep -qw "$netns" || die "no network namespace $netns: run 'hack/node.sh net-up' first"
  local start=$SECONDS
  check_disk
  cgroups_up
  write_configs
  nsenter --net="/run/netns/$netns" -- unshare --mount --propagation slave -- \
    "$0" inside >"$state/logs/holder.log" 2>&1 </dev/null &
  for _ in $(seq 1 300); do [ -f "$state/pids/holder.pid" ] && break; sleep 0.1; done
  [ -f "$state/pids/holder.pid" ] || { cat "$state/logs/holder.log" >&2; die "the node did not start"; }
  load pause coredns
  load
  say "waiting for $node_name to be Ready (logs: $state/logs)"
  local ok=""
  for _ in $(seq 1 120); do
    if kubectl get node "$node_name" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True; then
      ok=1; break
    fi
    status || { tail -n 20 "$state"/logs/*.log >&2; die "a node process exited; logs: $state/logs"; }
    sleep 0.5
  done
  [ -n "$ok" ] || { tail -n 20 "$state/logs/kubelet.log" >&2; die "$node_name did not become Ready; log: $state/logs/kubelet.log"; }
  say "$node_name Ready in $((SECONDS - start))s ($node_ip, pods $pod_cidr)"
}

down() {
  clean
  local left; left=$(leftovers)
  [ -z "$left" ] || die "left behind: $left"
  say "stopped"
}

case ${1:-} in
  check) check ;;
  clean) clean ;;
  net-up) net_up ;;
  up) up ;;
  inside) inside ;;
  down) down ;;
  status) status ;;
  env) env_lines ;;
  exec) shift; node_exec "$@" ;;
  ctr) shift; ctr "$@" ;;
  load) shift; load "$@" ;;
  leftovers) leftovers ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
