#!/usr/bin/env bash
# `make test`: the whole suite as two pytest sessions side by side. The real-Slurm tests spend most of
# their wall time waiting on Slurm (its 30 s limit timer, requeue, node-failure detection) with the CPU
# idle, so they run beside the rest instead of after it; both sessions must pass.
# Usage: tests/run_suite.sh PYTHON [PYTEST ARGS...] (with arguments, one plain session runs them).
set -uo pipefail
python=$1
shift
if [ $# -gt 0 ]; then
  exec "$python" -m pytest "$@"
fi

slurm_tests=tests/launch/test_launch_slurm_cluster.py
slurm_log=$(mktemp "${TMPDIR:-/tmp}/mdeq-slurm-tests.XXXXXX")
"$python" -m pytest "$slurm_tests" >"$slurm_log" 2>&1 &
slurm_pid=$!
# an interrupted run stops the Slurm session too (its fixture tears the cluster down)
trap 'kill -INT "$slurm_pid" 2>/dev/null; wait "$slurm_pid"; exit 130' INT TERM

"$python" -m pytest --ignore="$slurm_tests"
rest=$?
wait "$slurm_pid"
slurm=$?
trap - INT TERM
echo "=== the Slurm cluster session ($slurm_tests) ==="
cat "$slurm_log"
rm -f "$slurm_log"
echo "=== sessions: rest exit $rest, Slurm exit $slurm ==="
[ "$rest" -eq 0 ] && [ "$slurm" -eq 0 ]
