#!/usr/bin/env bash
# Set up nnconform on a fresh Debian/Ubuntu machine with Python 3.11: a .venv in the repository
# root with every Python dependency installed from requirements.lock (hash-checked), and the
# Fashion-MNIST data package when we may install it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
pip_q() { .venv/bin/pip install --progress-bar off "$@"; }

if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv
      rm -rf .venv && "$PYTHON" -m venv .venv
    else
      echo "error: '$PYTHON -m venv' failed; install python3-venv (sudo apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
fi
# Every Python dependency from requirements.lock (`make lock` writes it): exact versions, sha256
# hashes checked, no resolver (the lock is complete, so --no-deps). nncodec waits for the second
# step: its sdist builds against the setuptools, wheel and pybind11 the first step installs.
LOCK_MAIN=$(mktemp) LOCK_NNCODEC=$(mktemp)
trap 'rm -f "$LOCK_MAIN" "$LOCK_NNCODEC"' EXIT
awk '/^[^ #]/ { skip = ($0 ~ /^nncodec==/) } !skip' requirements.lock > "$LOCK_MAIN"
awk '/^[^ #]/ { keep = ($0 ~ /^nncodec==/) } keep' requirements.lock > "$LOCK_NNCODEC"
pip_q --require-hashes --no-deps -r "$LOCK_MAIN"
# MPEG NNC reference codec (Fraunhofer HHI), from its sdist (a C++ extension, about 2.5 minutes;
# skipped when the locked version is installed). Its numpy<2 pin is not needed, hence --no-deps.
pip_q --require-hashes --no-deps --no-build-isolation -r "$LOCK_NNCODEC"
# nnconform itself, editable (its dependencies are all in the lock). foolbox, in the lock with
# --no-deps, ships the 20 labelled ImageNet sample images we use offline; its code is never imported.
pip_q --no-deps --no-build-isolation -e .

# System packages, installed only when missing: the Fashion-MNIST data, and headless Chromium with
# its driver for the self-test that renders the HTML report (tests/test_report_render.py).
FMNIST=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
APT_PKGS=()
[ -f "$FMNIST" ] || APT_PKGS+=(dataset-fashion-mnist)
# bubblewrap: the OS sandbox proposal code runs in (nnconform.sandbox; without it, a plain subprocess)
command -v bwrap >/dev/null || APT_PKGS+=(bubblewrap)
# The embedded ASR anchor: espeak-ng speaks its synthetic corpus (nnconform.speech.synth), and
# pocketsphinx-testdata ships the five LibriVox utterances of the real-speech smoke set.
command -v espeak-ng >/dev/null || APT_PKGS+=(espeak-ng)
[ -f /usr/share/pocketsphinx/test/data/librivox/transcription ] || APT_PKGS+=(pocketsphinx-testdata)
if ! command -v chromium >/dev/null || ! { command -v chromedriver >/dev/null || [ -x /usr/bin/chromedriver ]; }; then
  APT_PKGS+=(chromium chromium-driver)
fi
if [ ${#APT_PKGS[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT_PKGS[@]}"
  else
    if [ ! -f "$FMNIST" ]; then
      echo "note: Fashion-MNIST is not installed. Run 'sudo apt-get install dataset-fashion-mnist', or pass"
      echo "      --nnc-data-dir DIR with the four IDX files; otherwise those cases skip saying so."
    fi
    if [[ " ${APT_PKGS[*]} " == *" espeak-ng "* || " ${APT_PKGS[*]} " == *" pocketsphinx-testdata "* ]]; then
      echo "note: the ASR anchor's data needs 'sudo apt-get install espeak-ng pocketsphinx-testdata';"
      echo "      otherwise its cases skip saying so."
    fi
    if [[ " ${APT_PKGS[*]} " == *" chromium "* ]]; then
      echo "note: headless Chromium is not installed. Run 'sudo apt-get install chromium chromium-driver'"
      echo "      (selenium comes with the [test] extra); otherwise the HTML render self-test skips saying so."
    fi
  fi
fi
touch .venv/.nnconform-installed
