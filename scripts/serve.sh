#!/usr/bin/env bash
# The main job on the embedded default model: sets up .venv when needed, then starts `omni serve`
# (the browser demo; it prints the URL to open, http://127.0.0.1:8080/ by default).
# Extra arguments go to the command.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh" serve
exec "$root/.venv/bin/omni" serve "$@"
