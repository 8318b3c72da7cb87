#!/usr/bin/env bash
# Offline checks of everything under deploy/ (run by .ci/run before `cargo test`; run it by hand
# after editing deploy/). It installs what it needs: the systemd package with apt-get when
# systemd-analyze is missing (as root), and deploy/requirements.txt into a virtualenv
# (.venv-deploy, or $DEPLOY_VENV).
#
# 1. systemd: `systemd-analyze verify` on a copy of deploy/systemd/scopegate.service whose
#    ExecStart= binary is a placeholder script (verify insists the binary exists; the real
#    binary and the real arguments are exercised by `cargo test --test deploy`). verify only
#    warns about unknown keys and bad values, so any line it prints about the unit fails the
#    check. Then `systemd-analyze security --offline` must rate the unit's exposure at most 2.0.
# 2. Kubernetes: every kustomization (base and each overlay) is rendered with `kubectl
#    kustomize` or `kustomize build` when one is installed, and then deploy/k8s/render.py must
#    render the same documents (so the fallback stays true); without a binary render.py alone
#    renders. Each rendering is validated with `kubernetes-validate --strict` against the
#    oldest Kubernetes the manifests support (1.30: the preStop sleep action) and the newest
#    whose schemas the pinned package ships.
# 3. Container image: deploy/Containerfile builds with CI's command (`cargo build --release
#    --locked`, also in .ci/run); when target/release/scopegate exists, it may link only
#    against what distroless/cc-debian12 ships (glibc <= 2.36, libgcc).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

K8S_VERSIONS=(1.30.0 1.37.0)
SECURITY_THRESHOLD=20 # systemd-analyze's scale is 0-100; it prints 2.0 for 20
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() {
    echo "deploy/check.sh: $*" >&2
    exit 1
}

# --- tools --------------------------------------------------------------------------------------
venv=${DEPLOY_VENV:-$PWD/.venv-deploy}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r deploy/requirements.txt
py="$venv/bin/python"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || fail "systemd-analyze is missing: install the systemd package"
    echo "== deploy: installing systemd (for systemd-analyze)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

# --- 1. systemd ---------------------------------------------------------------------------------
echo "== deploy: systemd unit"
unit=deploy/systemd/scopegate.service
bin=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")
[ -n "$bin" ] || fail "$unit has no ExecStart="
printf '#!/bin/sh\nexit 0\n' >"$tmp/scopegate"
chmod +x "$tmp/scopegate"
sed "s|^ExecStart=$bin |ExecStart=$tmp/scopegate |" "$unit" >"$tmp/scopegate.service"
if ! out=$(systemd-analyze verify "$tmp/scopegate.service" 2>&1); then
    echo "$out"
    fail "systemd-analyze verify failed on $unit"
fi
if [ -n "$out" ]; then
    echo "$out"
    if grep -qF 'scopegate' <<<"$out"; then
        fail "systemd-analyze verify warned about $unit (above)"
    fi
fi
if ! out=$(systemd-analyze security --offline=yes --threshold="$SECURITY_THRESHOLD" --no-pager \
    "$tmp/scopegate.service" 2>&1); then
    echo "$out"
    fail "$unit: exposure above $((SECURITY_THRESHOLD / 10)).$((SECURITY_THRESHOLD % 10))"
fi
grep 'Overall exposure' <<<"$out" || true

# --- 2. Kubernetes ------------------------------------------------------------------------------
for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
    dir=${dir%/}
    name=$(echo "$dir" | tr / _)
    out="$tmp/$name.yaml"
    if command -v kubectl >/dev/null 2>&1; then
        kubectl kustomize "$dir" >"$out"
        "$py" deploy/k8s/render.py --compare "$dir" "$out"
        how="kubectl kustomize (render.py agrees)"
    elif command -v kustomize >/dev/null 2>&1; then
        kustomize build "$dir" >"$out"
        "$py" deploy/k8s/render.py --compare "$dir" "$out"
        how="kustomize build (render.py agrees)"
    else
        "$py" deploy/k8s/render.py "$dir" >"$out"
        how="deploy/k8s/render.py (no kustomize binary here)"
    fi
    echo "== deploy: $dir rendered with $how"
    for version in "${K8S_VERSIONS[@]}"; do
        "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "$out" ||
            fail "$dir does not validate against Kubernetes $version"
    done
    echo "   $(grep -c '^kind:' "$out") documents valid (strict) for Kubernetes ${K8S_VERSIONS[*]}"
done

# --- 3. container image -------------------------------------------------------------------------
echo "== deploy: container image"
build='cargo build --release --locked'
grep -qF "RUN $build" deploy/Containerfile || fail "deploy/Containerfile does not run '$build'"
grep -qF "$build" .ci/run || fail ".ci/run does not run '$build' (the image's build step)"
image_rust=$(sed -n 's|^FROM docker.io/library/rust:\([0-9.]*\).*|\1|p' deploy/Containerfile)
ci_rust=$(rustc --version | sed -n 's/^rustc \([0-9]*\.[0-9]*\).*/\1/p')
if [ "$image_rust" != "$ci_rust" ]; then
    echo "   warning: deploy/Containerfile builds with Rust $image_rust, CI with $ci_rust"
fi
release=target/release/scopegate
if [ -x "$release" ]; then
    for lib in $(readelf -d "$release" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
        case $lib in
        libc.so.6 | libm.so.6 | libgcc_s.so.1 | ld-linux-*.so.* | libdl.so.2 | libpthread.so.0 | librt.so.1) ;;
        *) fail "$release needs $lib, which distroless/cc-debian12 does not ship" ;;
        esac
    done
    glibc=$(objdump -T "$release" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)
    if [ "$(printf '%s\n2.36\n' "$glibc" | sort -V | tail -n 1)" != 2.36 ]; then
        fail "$release needs glibc $glibc; Debian 12 (the runtime image) has 2.36"
    fi
    echo "   $release links only against the runtime image's libraries (glibc >= $glibc)"
else
    echo "   (no $release: run '$build' first to check its libraries)"
fi
echo "== deploy: all checks passed"
