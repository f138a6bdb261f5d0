#!/usr/bin/env bash
# Builds the local control-plane toolchain from Go modules (see DESIGN.md, "Local control plane").
#
#   toolchain/build.sh [COMPONENT ...]      components: kubernetes etcd kwok helm prometheus crds
#                                            containerd cni coredns prometheus-operator keda
#
# Each component is pinned by the wrapper module toolchain/<component>/go.mod (+ go.sum). Results
# are cached outside the checkout in $LLMCHAIN_TOOLCHAIN_CACHE (default ~/.cache/llmchain/toolchain)
# under <component>-<version>-<hash of the wrapper files>, so a second run takes seconds; the
# checkout gets symlinks in .toolchain/bin, .toolchain/crds and .toolchain/manifests. A failure stops at once and names
# the component and its log file.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cache=${LLMCHAIN_TOOLCHAIN_CACHE:-$HOME/.cache/llmchain/toolchain}
links=$root/.toolchain
export CGO_ENABLED=0 GOFLAGS=-mod=mod
all_components=(kubernetes etcd kwok helm prometheus crds containerd cni coredns prometheus-operator keda)

log() { printf '[toolchain %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[toolchain] ERROR: %s\n' "$*" >&2; exit 1; }

# Version of the main module a wrapper requires (the first require line).
pinned_version() { # DIR MODULE
  (cd "$1" && go mod edit -json) | python3 -c \
    'import json,sys; m=sys.argv[1]; print(next(r["Version"] for r in json.load(sys.stdin)["Require"] if r["Path"]==m))' "$2"
}

tools_of() { # DIR
  (cd "$1" && go mod edit -json) | python3 -c \
    'import json,sys; print(" ".join(t["Path"] for t in json.load(sys.stdin).get("Tool") or []))'
}

# Bump when the way a component is built or laid out changes, so caches are rebuilt.
recipe=2

# The key covers what decides the output: the wrapper files, the Go version, the ldflags, the recipe.
cache_key() { # COMPONENT VERSION
  local sum
  sum=$({ cat "$here/$1"/go.mod "$here/$1"/go.sum 2>/dev/null; go version; ldflags_for "$1" "$2"
          tags_for "$1"; outdir_for "$1"
          echo "recipe $recipe"; } \
    | sha256sum | cut -c1-12)
  printf '%s-%s-%s' "$1" "$2" "$sum"
}

# Run a long command with a heartbeat line every 30 s, its output going to LOG.
run_logged() { # COMPONENT LOG CMD...
  local component=$1 logfile=$2; shift 2
  local start=$SECONDS
  "$@" >"$logfile" 2>&1 &
  local pid=$! next_beat=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    sleep 2
    if (( SECONDS >= next_beat )) && kill -0 "$pid" 2>/dev/null; then
      log "$component: still building ($((SECONDS - start))s elapsed; log: $logfile)"
      next_beat=$((SECONDS + 30))
    fi
  done
  if ! wait "$pid"; then
    tail -n 20 "$logfile" >&2 || true
    die "$component failed after $((SECONDS - start))s; full log: $logfile"
  fi
}

ldflags_for() { # COMPONENT VERSION
  case $1 in
    kubernetes)
      local v=$2 major minor
      major=${v#v}; major=${major%%.*}
      minor=$(echo "$v" | cut -d. -f2)
      local f="-s -w"
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        f+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
        f+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
      done
      printf '%s' "$f" ;;
    helm) printf '%s' "-s -w -X helm.sh/helm/v3/internal/version.version=$2" ;;
    kwok) printf '%s' "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${2#v}" ;;
    # Prometheus 3.x publishes its Go module as v0.3MM.P for release 3.MM.P.
    prometheus) printf '%s' "-s -w -X github.com/prometheus/common/version.Version=3.${2#v0.3}" ;;
    prometheus-operator) printf '%s' "-s -w -X github.com/prometheus/common/version.Version=${2#v}" ;;
    keda) printf '%s' "-s -w -X github.com/kedacore/keda/v2/version.Version=$2" ;;
    containerd) printf '%s' "-s -w -X github.com/containerd/containerd/v2/version.Version=$2" ;;
    *) printf '%s' "-s -w" ;;
  esac
}

# Where a component's binaries go: CNI plugins (bridge, loopback, ...) stay off PATH, whose
# `bridge` is iproute2's.
outdir_for() { # COMPONENT
  case $1 in cni) printf 'cni' ;; *) printf 'bin' ;; esac
}

# Build tags: containerd without the snapshotters that need cgo or kernel features we never use.
tags_for() { # COMPONENT
  case $1 in
    containerd) printf '%s' "no_btrfs no_devmapper no_zfs" ;;
    *) printf '' ;;
  esac
}

main_module_of() {
  case $1 in
    kubernetes) echo k8s.io/kubernetes ;;
    etcd) echo go.etcd.io/etcd/server/v3 ;;
    kwok) echo sigs.k8s.io/kwok ;;
    helm) echo helm.sh/helm/v3 ;;
    prometheus) echo github.com/prometheus/prometheus ;;
    crds) echo github.com/prometheus-operator/prometheus-operator ;;
    containerd) echo github.com/containerd/containerd/v2 ;;
    cni) echo github.com/containernetworking/plugins ;;
    coredns) echo github.com/coredns/coredns ;;
    prometheus-operator) echo github.com/prometheus-operator/prometheus-operator ;;
    keda) echo github.com/kedacore/keda/v2 ;;
    *) die "unknown component '$1' (known: ${all_components[*]})" ;;
  esac
}

build_binaries() { # COMPONENT VERSION DEST LOG
  local component=$1 version=$2 dest=$3 logfile=$4 tools out
  tools=$(tools_of "$here/$component")
  [ -n "$tools" ] || die "$component: no 'tool' lines in toolchain/$component/go.mod"
  out=$dest/$(outdir_for "$component")
  mkdir -p "$out"
  log "$component $version: building $(for t in $tools; do printf '%s ' "${t##*/}"; done | sed 's/^v3 $/etcd /')(log: $logfile)"
  (cd "$here/$component" && run_logged "$component" "$logfile" \
    go build -trimpath -tags "$(tags_for "$component")" -ldflags "$(ldflags_for "$component" "$version")" \
      -o "$out/" $tools)
  # go names a binary after its package path (go.etcd.io/etcd/server/v3 -> server); the
  # operators' cmd/operator and KEDA's cmd/adapter get their project's name.
  case $component in
    etcd) mv "$dest/bin/server" "$dest/bin/etcd" ;;
    prometheus-operator) mv "$dest/bin/operator" "$dest/bin/prometheus-operator" ;;
    keda) mv "$dest/bin/operator" "$dest/bin/keda-operator"; mv "$dest/bin/adapter" "$dest/bin/keda-adapter" ;;
  esac
}

# Upstream CRDs: files copied out of the pinned modules' source (prometheus-operator, KEDA).
build_crds() { # DEST LOG
  local dest=$1 logfile=$2 mod ver dir
  mkdir -p "$dest/crds"
  while read -r mod ver; do
    log "crds: fetching $mod@$ver"
    dir=$(cd "$(mktemp -d)" && go mod download -json "$mod@$ver" 2>>"$logfile" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
      || die "crds: could not fetch $mod@$ver; log: $logfile"
    case $mod in
      github.com/prometheus-operator/prometheus-operator)
        # The whole monitoring.coreos.com set: the Prometheus Operator in the cluster needs it.
        install -m 0644 "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_*.yaml "$dest/crds/"
        # Its deployment and RBAC, and Prometheus' RBAC, for hack/monitoring.sh.
        mkdir -p "$dest/manifests/prometheus-operator"
        install -m 0644 "$dir"/example/rbac/prometheus-operator/prometheus-operator-{cluster-role,cluster-role-binding,deployment,service-account,service}.yaml \
          "$dir"/example/rbac/prometheus/prometheus-{cluster-role,cluster-role-binding,service-account}.yaml \
          "$dest/manifests/prometheus-operator/" ;;
      github.com/kedacore/keda/v2)
        install -m 0644 "$dir"/config/crd/bases/*.yaml "$dest/crds/"
        # Its kustomize tree (operator, metrics API server, RBAC), for hack/monitoring.sh.
        mkdir -p "$dest/manifests"
        cp -r "$dir/config" "$dest/manifests/keda"; chmod -R u+w "$dest/manifests/keda" ;;
    esac
  done < <((cd "$here/crds" && go mod edit -json) | python3 -c \
    'import json,sys; [print(r["Path"], r["Version"]) for r in json.load(sys.stdin)["Require"]]')
}

build_component() { # COMPONENT
  local component=$1 module version key dest logdir start=$SECONDS
  module=$(main_module_of "$component")
  version=$(pinned_version "$here/$component" "$module")
  key=$(cache_key "$component" "$version")
  dest=$cache/$key
  if [ -f "$dest/.complete" ]; then
    log "$component $version: cached ($dest)"
  else
    logdir=$cache/logs; mkdir -p "$logdir"
    rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
    if [ "$component" = crds ]; then
      build_crds "$dest.tmp" "$logdir/$key.log"
    else
      build_binaries "$component" "$version" "$dest.tmp" "$logdir/$key.log"
    fi
    touch "$dest.tmp/.complete"
    rm -rf "$dest"; mv "$dest.tmp" "$dest"
    log "$component $version: built in $((SECONDS - start))s"
  fi
  local link
  for link in "$links"/*/*; do  # links to another build of this component
    [ -L "$link" ] || continue
    case $(readlink "$link") in "$cache/$component-v"*) rm -f "$link" ;; esac
  done
  for kind in bin cni crds manifests; do
    [ -d "$dest/$kind" ] || continue
    mkdir -p "$links/$kind"
    for f in "$dest/$kind"/*; do ln -sfn "$f" "$links/$kind/$(basename "$f")"; done
  done
}

main() {
  command -v go >/dev/null || die "the go command is missing (needed to build the toolchain)"
  local components=("$@") total_start=$SECONDS c
  [ ${#components[@]} -gt 0 ] || components=("${all_components[@]}")
  for c in "${components[@]}"; do build_component "$c"; done
  # Links left from an earlier layout (a renamed binary) would point at nothing.
  find "$links" -xtype l -delete 2>/dev/null || true
  log "done in $((SECONDS - total_start))s; binaries in $links/bin"
}

main "$@"
exit
