#!/usr/bin/env bash
# Debian packages the team stack and its tests need: PostgreSQL (the Prefect server's
# database), Redis (stage locks shared by workers) and Chromium (tests/test_ui.py drives
# it headless through Playwright: Playwright's own browser download needs the internet,
# Debian's build does not). Installs only what is missing; nothing is started.
set -euo pipefail
missing=()
ls -d /usr/lib/postgresql/*/bin/initdb > /dev/null 2>&1 || missing+=(postgresql)
command -v redis-server > /dev/null || missing+=(redis-server)
# Fonts too: a headless browser without any renders the UI's text as empty boxes.
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
echo "installed: ${missing[*]}"
