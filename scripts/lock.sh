#!/usr/bin/env bash
# Regenerate requirements.lock (`make lock`): every Python dependency pinned with its sha256 hashes.
#
# Inputs: pyproject.toml's dependencies and [test] extra, requirements.in (what setup.sh adds) and
# requirements-nodeps.in (installed without their dependencies). The resolver is uv's
# `uv pip compile`, run from a tools venv (.cache/lock-tools), reading the same indexes and
# constraints as pip does here (`pip config list`), so the hashes are those of the files pip
# installs on a machine of this kind (torch and torchvision come from a local wheel index).
# Existing pins are kept; `bash scripts/lock.sh --upgrade` moves them to the newest versions.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
TOOLS=.cache/lock-tools
if [ ! -x "$TOOLS/bin/uv" ] || [ "$("$TOOLS/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install --quiet "uv==$UV_VERSION"
fi

# pip's own index configuration, passed to uv (which does not read pip.conf)
INDEX_ARGS=(--index-strategy unsafe-best-match)
for url in $(pip config get global.extra-index-url 2>/dev/null || true); do INDEX_ARGS+=(--extra-index-url "$url"); done
for dir in $(pip config get global.find-links 2>/dev/null || true) ${PIP_FIND_LINKS:-}; do INDEX_ARGS+=(--find-links "$dir"); done
constraint=$(pip config get global.constraint 2>/dev/null || true)
[ -n "$constraint" ] && [ -f "$constraint" ] && INDEX_ARGS+=(--constraints "$constraint")

COMMON=(--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet
        --custom-compile-command "make lock" "${INDEX_ARGS[@]}" "$@")
"$TOOLS/bin/uv" pip compile "${COMMON[@]}" --extra test -o requirements.lock pyproject.toml requirements.in
{
  echo
  echo "# Installed with --no-deps, from requirements-nodeps.in (scripts/setup.sh builds nncodec from its sdist"
  echo "# without build isolation, with setuptools, wheel and pybind11 pinned above)"
  "$TOOLS/bin/uv" pip compile "${COMMON[@]}" --no-deps --no-header requirements-nodeps.in
} >> requirements.lock
echo "requirements.lock: $(grep -c '^[A-Za-z0-9].*==' requirements.lock) pinned distributions"
