#!/usr/bin/env bash
# The real scheduled path on one machine: a Prefect server on 127.0.0.1, a process work pool,
# the deployments of prefect.yaml, a worker, one triggered run; everything stopped by pid.
#
#   scripts/prefect_server_demo.sh DATA_DIR RUN_DIR [DEPLOYMENT]
#
# DEPLOYMENT defaults to "validate/validate-delivery" (fast); use
# "cohort-study/monthly-full-run" for the whole study. Needs `uv sync` done.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${1:?data dir}; RUN_DIR=${2:?run dir}; DEPLOYMENT=${3:-validate/validate-delivery}
PORT=${PREFECT_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
export PREFECT_HOME=${PREFECT_HOME:-$PWD/.prefect/server}
export PREFECT_API_URL="http://127.0.0.1:${PORT}/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 GX_ANALYTICS_ENABLED=false
export COHORT_PROJECT_DIR=$PWD
mkdir -p "$PREFECT_HOME"
UV=$(command -v uv || echo "$HOME/.local/bin/uv")
PIDS=()
# each background process leads its own process group (setsid), so killing the group stops
# uv and the Prefect process it started
cleanup() { for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; sleep 1;
            for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT

setsid "$UV" run --locked prefect server start --host 127.0.0.1 --port "$PORT" > "$PREFECT_HOME/server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 90); do
  curl -sf "$PREFECT_API_URL/health" >/dev/null 2>&1 && break; sleep 1
done
curl -sf "$PREFECT_API_URL/health" >/dev/null || { echo "server did not start"; cat "$PREFECT_HOME/server.log"; exit 1; }
echo "server healthy on $PREFECT_API_URL (pid ${PIDS[0]})"
"$UV" run --locked prefect work-pool create cohort-pool --type process --overwrite >/dev/null
"$UV" run --locked prefect --no-prompt deploy --all >/dev/null
setsid "$UV" run --locked prefect worker start --pool cohort-pool --limit 1 > "$PREFECT_HOME/worker.log" 2>&1 &
PIDS+=($!)
echo "worker started (pid ${PIDS[1]})"
FLOW_RUN=$("$UV" run --locked python - "$DEPLOYMENT" "$DATA_DIR" "$RUN_DIR" <<'PY'
import sys
from prefect.deployments import run_deployment
name, data_dir, run_dir = sys.argv[1:4]
params = {"run_dir": run_dir}
if name.startswith(("validate", "cohort-study")):
    params["data_dir"] = data_dir
if name.startswith("cohort-study"):
    params["demo"] = True
run = run_deployment(name, parameters=params, timeout=900)
print(run.id, run.state.type.value if run.state else "UNKNOWN")
# the flow run's name, state message and logs, read back through the API (to stderr: the
# caller captures only the line above); the flow process sends its last logs as it exits
import time
from prefect import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
with get_client(sync_client=True) as client:
    seen, logs = -1, []
    for _ in range(30):
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        if len(logs) == seen:
            break
        seen = len(logs)
        time.sleep(1)
    print(f"flow run name: {run.name}", file=sys.stderr)
    print(f"flow run state message: {run.state.message if run.state else ''}", file=sys.stderr)
    for entry in logs:
        print(f"flow run log {entry.name}: {entry.message}", file=sys.stderr)
PY
)
echo "flow run: $FLOW_RUN"
[[ "$FLOW_RUN" == *COMPLETED ]] || { echo "flow run did not complete"; tail -50 "$PREFECT_HOME/worker.log"; exit 1; }
echo "completed; stopping server and worker"
