#!/usr/bin/env bash
# Install spikewatch into fresh virtualenvs as a user would and check the two installs:
#   pip install .            -> `import spikewatch` works, no FastAPI/uvicorn/SQLAlchemy/Alembic,
#                               no generic top-level name (`import agent` fails)
#   pip install '.[server]'  -> `spikewatch bench` says the benchmarks need a source checkout,
#                               `spikewatch serve` starts and answers /readyz without torch
# Needs a package index (PyPI or a mirror). Usage: scripts/check-install.sh [PYTHON]
set -euo pipefail
PYTHON=${1:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'kill "${SERVER:-0}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
cd "$WORK"

"$PYTHON" -m venv agent-env
agent-env/bin/pip install -q "$ROOT"
agent-env/bin/python -c "import spikewatch; print('agent install: import spikewatch', spikewatch.__version__)"
for pkg in fastapi uvicorn sqlalchemy alembic; do
  if agent-env/bin/pip show -q "$pkg" >/dev/null 2>&1; then echo "FAIL: $pkg installed"; exit 1; fi
done
echo "agent install: no fastapi, uvicorn, sqlalchemy, alembic"
for name in agent server monitor migrations; do
  if agent-env/bin/python -c "import $name" >/dev/null 2>&1; then echo "FAIL: import $name works"; exit 1; fi
done
echo "agent install: import agent/server/monitor/migrations all fail"

"$PYTHON" -m venv server-env
server-env/bin/pip install -q "$ROOT[server]"
if server-env/bin/python -c "import torch" >/dev/null 2>&1; then echo "FAIL: torch installed"; exit 1; fi
set +e
BENCH=$(server-env/bin/spikewatch bench guard 2>&1); STATUS=$?
set -e
if [ "$STATUS" -ne 2 ] || ! grep -q "source checkout" <<<"$BENCH"; then
  echo "FAIL: spikewatch bench from a wheel: status $STATUS: $BENCH"; exit 1
fi
echo "server install: spikewatch bench says it needs a source checkout (status 2)"
port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP=$(port); ZMQ=$(port)
server-env/bin/spikewatch serve --db "sqlite:///$WORK/sw.db" --zmq "tcp://127.0.0.1:$ZMQ" \
  --http-port "$HTTP" >serve.log 2>&1 &
SERVER=$!
for _ in $(seq 60); do
  if curl -sf -m 2 "http://127.0.0.1:$HTTP/readyz" >/dev/null; then
    echo "server install: spikewatch serve ready without torch"; exit 0
  fi
  sleep 0.5
done
echo "FAIL: spikewatch serve not ready"; cat serve.log; exit 1
