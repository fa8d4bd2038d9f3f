#!/usr/bin/env bash
# `make install-cli`: puts `flo` and `flotilla` on PATH as symlinks to the release build, so
# every later `make build` is picked up without reinstalling.
#
# Target directory: $INSTALL_DIR if set; else ${CARGO_HOME:-~/.cargo}/bin when it exists and
# is on PATH; else /usr/local/bin when writable. Environment: RELEASE_DIR (default
# ${CARGO_TARGET_DIR:-~/.cache/flotilla/target}/release).
set -euo pipefail

RELEASE_DIR=${RELEASE_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}/release}
BINARIES=(flo flotilla)

on_path() {
    local dir=${1%/} entry
    local IFS=:
    for entry in $PATH; do
        [[ ${entry%/} == "$dir" ]] && return 0
    done
    return 1
}

for binary in "${BINARIES[@]}"; do
    if [[ ! -x $RELEASE_DIR/$binary ]]; then
        echo "install-cli: $RELEASE_DIR/$binary does not exist; run 'make build' first" >&2
        exit 1
    fi
done

cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
if [[ -n ${INSTALL_DIR:-} ]]; then
    dir=$INSTALL_DIR
elif [[ -d $cargo_bin ]] && on_path "$cargo_bin"; then
    dir=$cargo_bin
elif [[ -d /usr/local/bin && -w /usr/local/bin ]]; then
    dir=/usr/local/bin
else
    echo "install-cli: neither $cargo_bin (on PATH) nor /usr/local/bin (writable) is usable." >&2
    echo "install-cli: set INSTALL_DIR to a directory on your PATH, or run the binaries from $RELEASE_DIR" >&2
    exit 1
fi

mkdir -p "$dir"
for binary in "${BINARIES[@]}"; do
    ln -sfn "$RELEASE_DIR/$binary" "$dir/$binary"
done
echo "install-cli: linked ${BINARIES[*]} into $dir (-> $RELEASE_DIR)"
if ! on_path "$dir"; then
    echo "install-cli: note: $dir is not on PATH" >&2
fi
