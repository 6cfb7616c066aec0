#!/usr/bin/env bash
# Device side of the vLLM staging (see bench/vllm_stage.py, which writes the parts and prints the
# calls). Run from the repo root on the GPU machine.
#
#   bash bench/vllm_stage.sh receive N   copy .stage/vllm/partN (carried) to /tmp/vllm-stage/,
#                                        check its sha256 against .stage/vllm/manifest.txt, and say
#                                        which parts are still missing there
#   bash bench/vllm_stage.sh install     check that all parts are there (names the missing ones),
#                                        unpack, pip-install the wheels into /tmp/vllm-site (no
#                                        index, no deps), place the trimmed vllm tree there, and run
#                                        bench/vllm_smoke.py (prints vllm and the device). A second
#                                        install of the same payload only re-runs the smoke test.
#   then:  export PYTHONPATH=/tmp/vllm-site
#
# Files under /tmp survive between calls only while the machine stays warm (~30 s after a call).
set -euo pipefail

SRC=.stage/vllm
STAGE=/tmp/vllm-stage
SITE=/tmp/vllm-site
PY=${PYTHON:-python3}

die() { echo "vllm_stage.sh: $*" >&2; exit 1; }

manifest() {
    [[ -f $STAGE/manifest.txt ]] || die "no manifest in $STAGE: carry $SRC/manifest.txt with 'receive N' first"
    cat "$STAGE/manifest.txt"
}

# Parts of the manifest not yet in $STAGE with the right checksum.
missing_parts() {
    local name size sum
    while read -r name size sum; do
        [[ $name =~ ^part[0-9]+$ ]] || continue
        if [[ ! -f $STAGE/$name ]] || [[ $(stat -c %s "$STAGE/$name") != "$size" ]] ||
           [[ $(sha256sum "$STAGE/$name" | cut -d' ' -f1) != "$sum" ]]; then
            echo "$name"
        fi
    done < <(manifest)
}

receive() {
    local n=$1
    [[ $n =~ ^[0-9]+$ ]] || die "receive: expected a part number, got '$n'"
    [[ -f $SRC/manifest.txt ]] || die "receive: $SRC/manifest.txt not carried (add it to carry)"
    [[ -f $SRC/part$n ]] || die "receive: $SRC/part$n not carried (add it to carry)"
    mkdir -p "$STAGE"
    # A manifest of another pack makes the parts already here useless.
    if [[ -f $STAGE/manifest.txt ]] && ! cmp -s "$SRC/manifest.txt" "$STAGE/manifest.txt"; then
        echo "new manifest: dropping the parts of an earlier pack"
        rm -f "$STAGE"/part*
    fi
    cp "$SRC/manifest.txt" "$STAGE/manifest.txt"
    local line
    line=$(grep "^part$n " "$STAGE/manifest.txt") || die "receive: part$n is not in the manifest"
    cp "$SRC/part$n" "$STAGE/part$n.tmp"
    [[ $(sha256sum "$STAGE/part$n.tmp" | cut -d' ' -f1) == "$(echo "$line" | cut -d' ' -f3)" ]] ||
        { rm -f "$STAGE/part$n.tmp"; die "receive: part$n checksum differs from the manifest"; }
    mv "$STAGE/part$n.tmp" "$STAGE/part$n"
    local left
    left=$(missing_parts | tr '\n' ' ')
    echo "received part$n ($(echo "$line" | cut -d' ' -f2) bytes, sha256 ok); still missing: ${left:-none}"
}

install() {
    local left payload
    manifest > /dev/null
    left=$(missing_parts | tr '\n' ' ')
    [[ -z $left ]] || die "install: missing or damaged in $STAGE: ${left}(machine restarted? send them again with 'receive N')"
    payload=$(awk '$1 == "payload" {print $3}' "$STAGE/manifest.txt")
    if [[ -f $SITE/.stage-payload ]] && [[ $(cat "$SITE/.stage-payload") == "$payload" ]]; then
        echo "payload $payload already installed in $SITE"
    else
        local parts
        parts=$(awk '$1 ~ /^part[0-9]+$/ {print "'$STAGE'/" $1}' "$STAGE/manifest.txt")
        # shellcheck disable=SC2086
        [[ $(cat $parts | sha256sum | cut -d' ' -f1) == "$payload" ]] || die "install: joined parts differ from the manifest"
        rm -rf "$STAGE/unpacked" "$SITE"
        mkdir -p "$STAGE/unpacked" "$SITE"
        # shellcheck disable=SC2086
        if command -v xz > /dev/null; then
            cat $parts | xz -d -T0 | tar -x -C "$STAGE/unpacked"
        else  # no xz-utils: Python's lzma reads the same stream
            cat $parts | "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)' |
                tar -x -C "$STAGE/unpacked"
        fi
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --disable-pip-version-check --target "$SITE" "$STAGE"/unpacked/cp312/*.whl
        cp -a "$STAGE/unpacked/vllm-tree/." "$SITE/"
        rm -rf "$STAGE/unpacked"
        echo "$payload" > "$SITE/.stage-payload"
        echo "installed $(ls "$SITE" | grep -c '\.dist-info$') distributions into $SITE"
    fi
    # The machine's own versions that the staged pins lean on (pydantic needs typing-extensions
    # >= 4.16, googleapis-common-protos protobuf >= 6.33.5, vLLM numba 0.65.0).
    "$PY" -m pip list --disable-pip-version-check 2>/dev/null |
        grep -iE '^(typing[-_]extensions|protobuf|numpy|numba|anyio|transformers|tokenizers|torch|triton) ' |
        tr -s ' ' | tr '\n' ';' | sed 's/^/machine has: /; s/$/\n/' || true
    PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} "$PY" bench/vllm_smoke.py --site "$SITE" --quiet
    echo "usage: export PYTHONPATH=$SITE   (then python3 -c 'import vllm')"
}

case "${1:-}" in
    receive) [[ $# -eq 2 ]] || die "usage: $0 receive N"; receive "$2" ;;
    install) install ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
esac
