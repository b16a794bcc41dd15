#!/usr/bin/env bash
# The whole test suite: sets up .venv with the test extras when needed, then lint, type check and pytest.
# pytest runs inside a loopback-only network namespace when the machine allows one (tests must never
# reach any address but 127.0.0.1). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source "$root/scripts/env.sh" serve,test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
cmd=(.venv/bin/python -m pytest -q -ra "$@")
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && unshare -n true 2>/dev/null; then
  exec unshare -n sh -c 'ip link set lo up 2>/dev/null || true; exec "$@"' sh "${cmd[@]}"
fi
echo "[omni] no network namespace available: running tests on the host network" >&2
exec "${cmd[@]}"
