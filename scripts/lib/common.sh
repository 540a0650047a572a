# Sourced by the scripts in scripts/: puts the project's .venv in place and on PATH.
#
#   source "$(dirname "$0")/lib/common.sh"
#   ensure_venv dev        # extras to have installed: "", "dev", "dev,lab"
#
# The venv is (re)installed only when pyproject.toml changes or an extra is
# missing, so every script after the first starts in well under a second.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv"
export PATH="$VENV/bin:$PATH"
cd "$ROOT"

say() { printf '==> %s\n' "$*" >&2; }

ensure_venv() {
    local wanted="${1:-}" hash installed_hash="" installed_extras="" extras missing=0 extra
    hash="$(cat pyproject.toml profiling/pyproject.toml | sha256sum | cut -c1-16)"
    [ -f "$VENV/.installed" ] && read -r installed_hash installed_extras < "$VENV/.installed"
    # Install the union of what is there and what is wanted, so `run` after `test` keeps the dev tools.
    extras="$(printf '%s\n' ${installed_extras//,/ } ${wanted//,/ } | sort -u | paste -sd, -)"
    for extra in ${wanted//,/ }; do
        [[ ",$installed_extras," == *",$extra,"* ]] || missing=1
    done
    if [ ! -x "$VENV/bin/python" ]; then
        say "Creating .venv with $(${PYTHON:-python3} --version)"
        "${PYTHON:-python3}" -m venv "$VENV"
        missing=1
    fi
    if [ "$missing" = 1 ] || [ "$hash" != "$installed_hash" ]; then
        say "Installing the project into .venv (.${extras:+[$extras]}; uWSGI compiles on the first run, about a minute)"
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        # The profiler first: the site depends on it by name, and it is not on PyPI.
        "$VENV/bin/python" -m pip install --quiet -e ./profiling -e ".${extras:+[$extras]}"
        echo "$hash $extras" > "$VENV/.installed"
    fi
}

# The checkout keeps its run-time files in var/ (an installed site uses Flask's instance folder).
export VAR_DIR="${VAR_DIR:-$ROOT/var}"
