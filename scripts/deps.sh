#!/usr/bin/env bash
# `make deps`: checks that cargo is on PATH and installs the system packages the build needs
# on Debian/Ubuntu. Idempotent; when nothing is missing it neither touches apt nor the network.
#
# Environment: SUDO (empty when root, "sudo" otherwise; set by the Makefile), CARGO (cargo),
# DEPS_EXTRA (more packages to install, space-separated).
set -euo pipefail

CARGO=${CARGO:-cargo}
SUDO=${SUDO-}
[[ $(id -u) -eq 0 ]] || SUDO=${SUDO:-sudo}

# libclang-dev: bindgen in librocksdb-sys loads libclang at build time.
# build-essential/g++: RocksDB is C++. pkg-config: -sys crates probe for system libraries.
PACKAGES=(libclang-dev build-essential g++ pkg-config make)
# Extra packages a target needs on top, e.g. DEPS_EXTRA=iproute2 for `make chaos` (`ip netns`).
read -r -a extra <<<"${DEPS_EXTRA:-}"
PACKAGES+=("${extra[@]}")

if ! command -v "$CARGO" >/dev/null 2>&1; then
    echo "deps: cargo not found on PATH." >&2
    if [[ -f ${CARGO_HOME:-$HOME/.cargo}/env ]]; then
        echo "deps: a toolchain is installed but not on PATH; run: . \"${CARGO_HOME:-$HOME/.cargo}/env\"" >&2
    else
        echo "deps: install a Rust toolchain (1.95 or newer) first. rustup cannot be downloaded on" >&2
        echo "deps: these machines, so use a machine image that ships one or copy ~/.cargo and ~/.rustup in." >&2
    fi
    exit 1
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "deps: not a Debian/Ubuntu system; make sure libclang, a C++ compiler, pkg-config and make are installed."
    exit 0
fi

installed() {
    # `dpkg -s` also succeeds for removed packages whose config files remain; check the state.
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

missing=()
for package in "${PACKAGES[@]}"; do
    installed "$package" || missing+=("$package")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "deps: ok ($("$CARGO" --version); ${PACKAGES[*]} installed)"
    exit 0
fi

echo "deps: installing ${missing[*]}"
if [[ -n $SUDO ]] && ! command -v "$SUDO" >/dev/null 2>&1; then
    echo "deps: not root and '$SUDO' is not installed; as root run: apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi
as_root=()
[[ -z $SUDO ]] || as_root=("$SUDO")
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "deps: installed ${missing[*]}"
