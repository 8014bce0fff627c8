# Sourced by scripts/serve and scripts/test: make .venv and install the package into it.
# ensure_venv [EXTRAS]  (EXTRAS such as "[dev]"; reinstalls when pyproject.toml changed)
ensure_venv() {
    local extras=${1:-}
    local stamp=".venv/.installed${extras:+-dev}"
    if [ ! -x .venv/bin/python ]; then
        echo "==> creating .venv" >&2
        python3 -m venv .venv
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
        || ! .venv/bin/python -c 'import chat' >/dev/null 2>&1; then
        echo "==> installing the package${extras:+ and its dev tools}" >&2
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -e ".${extras}"
        touch "$stamp"
    fi
}
