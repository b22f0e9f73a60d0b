#!/usr/bin/env bash
# The test command of the README and of CI: install, make sure PostgreSQL answers (the store
# tests run on SQLite and on PostgreSQL), then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
# The audit report tests look at the page in headless Chromium (Debian's package; Playwright
# drives it, its own browser download is not used).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
    || echo "could not install chromium; the report tests need it" >&2
fi
exec .venv/bin/python -m pytest "$@"
