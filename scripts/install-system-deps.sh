#!/usr/bin/env bash
# Installs the real programs the integration tests use (PostgreSQL, Prometheus, Alertmanager,
# Chromium, a Compose that can validate deploy/compose) when they are missing and this machine
# can install them. Says plainly when it cannot; the tests that need a missing program are then
# skipped with that reason.
set -u
need=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -eq 0 ]; then
  echo "system-deps: postgresql, prometheus, alertmanager, chromium and compose are present"
  exit 0
fi
echo "system-deps: missing ${need[*]}"
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: CANNOT INSTALL ${need[*]} (need root and apt-get); tests needing them will be skipped"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if timeout 600 apt-get update -qq && timeout 900 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
  echo "system-deps: installed ${need[*]}"
else
  echo "system-deps: INSTALL FAILED for ${need[*]}; tests needing them will be skipped"
fi
exit 0
