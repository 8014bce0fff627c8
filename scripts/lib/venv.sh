# Sourced by scripts/serve, scripts/test and scripts/lock: make .venv from the lock files.
#
#   ensure_venv run   the server's packages (requirements/run.txt)
#   ensure_venv dev   those plus the test and lint tools (requirements/dev.txt)
#
# Every package comes from the lock with its hash checked, so every machine runs exactly the
# versions CI ran; the package itself is installed editable with --no-build-isolation, so
# even its build backend (hatchling) is the locked one. A venv made from an older lock is
# made again from scratch, so nothing left over from it stays installed. dev.txt holds every
# package of run.txt at the same version (scripts/lock checks that), so a venv made for the
# tests serves `scripts/serve` as it is.
lock_hash() { cat "$1" pyproject.toml | sha256sum | cut -d' ' -f1; }

ensure_venv() {
    local kind=${1:-run}
    local lock="requirements/$kind.txt"
    local stamp=.venv/.locked
    local want
    want="$kind $(lock_hash "$lock")"
    local have=""
    [ -f "$stamp" ] && have=$(cat "$stamp")
    if [ -x .venv/bin/python ] && .venv/bin/python -c 'import chat' >/dev/null 2>&1; then
        [ "$have" = "$want" ] && return 0
        # The tests' venv serves the server too, when it was made from today's dev lock.
        [ "$kind" = run ] && [ "$have" = "dev $(lock_hash requirements/dev.txt)" ] && return 0
    fi
    # A venv made from today's run lock takes the dev lock on top (a superset); one made
    # from an older lock, or by hand, is made again from scratch.
    if [ -d .venv ] && [ "$have" != "run $(lock_hash requirements/run.txt)" ]; then
        echo "==> .venv was not made from today's lock: making it again" >&2
        rm -rf .venv
    fi
    if [ ! -x .venv/bin/python ]; then
        echo "==> creating .venv" >&2
        python3 -m venv .venv
    fi
    echo "==> installing the locked packages ($lock)" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r "$lock"
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
        --no-build-isolation -e .
    echo "$want" > "$stamp"
}
