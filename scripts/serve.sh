#!/usr/bin/env bash
# The main job on the embedded default model: sets up .venv when needed, then starts omni.
# Extra arguments go to the command.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh" serve
exec "$root/.venv/bin/omni" chat "$@"
