#!/usr/bin/env bash
# The operating-system packages the full test suite needs beside the Python ones: PostgreSQL's
# server binaries (a throwaway cluster per test session) and Chromium (the gallery's browser tests,
# driven by Playwright; never `playwright install`). Installed with apt-get when missing and when
# running as root; otherwise says what to install. Used by `make test` and `.ci/run`.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
((${#need[@]})) || exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
else
  echo "The test suite needs these OS packages: ${need[*]} (Debian: apt-get install --no-install-recommends ${need[*]})" >&2
  exit 1
fi
