#!/usr/bin/env bash
# Run a scorejax program as P processes on this machine, the way it runs on P hosts.
#
#   launch/local_multiprocess.sh [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-m MODULE]
#                                [-l LOG_DIR] [-g GRACE_SECONDS] [--] ARGS...
#
# Example (2 processes x 2 CPU devices = one 4-device mesh):
#   launch/local_multiprocess.sh -n 2 -d 2 -- \
#       --config=configs/score_matching.py:gmm8 --workdir=runs/gmm8_2proc
#
# Every process runs `$PYTHON -m MODULE ARGS...` (MODULE defaults to experiments.main) with
#   JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>  JAX_NUM_PROCESSES=P  JAX_PROCESS_ID=i
#   JAX_PLATFORMS=cpu  XLA_FLAGS=--xla_force_host_platform_device_count=K
# so scorejax.train.distributed.initialize() starts JAX's distributed runtime with gloo CPU
# collectives. Process 0 prints to this terminal; process i>0 writes LOG_DIR/process_i.log.
# When a process fails, the others stop on their own within the heartbeat timeout; any still
# running GRACE_SECONDS later are killed. Exit status: 0 if all succeeded, else the status of
# the first process that failed. Re-running the same command resumes from the last checkpoint.
set -euo pipefail

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NPROC=2
DEVICES=1
MODULE=experiments.main
LOG_DIR=""
GRACE=120
while getopts ":n:d:m:l:g:h" opt; do
  case "$opt" in
    n) NPROC="$OPTARG" ;;
    d) DEVICES="$OPTARG" ;;
    m) MODULE="$OPTARG" ;;
    l) LOG_DIR="$OPTARG" ;;
    g) GRACE="$OPTARG" ;;
    h) usage 0 ;;
    :) echo "option -$OPTARG needs a value" >&2; usage 2 ;;
    *) echo "unknown option -$OPTARG" >&2; usage 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
for v in NPROC DEVICES GRACE; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer, got '${!v}'" >&2; exit 2; }
done

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
LOG_DIR="${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/scorejax-mp.XXXXXX")}"
mkdir -p "$LOG_DIR"
PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

export JAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT"
export JAX_NUM_PROCESSES="$NPROC"
export JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES${XLA_FLAGS:+ $XLA_FLAGS}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'cleanup; exit 130' INT TERM

echo "launching $NPROC processes x $DEVICES CPU devices, coordinator $JAX_COORDINATOR_ADDRESS," \
  "logs of processes 1..$((NPROC - 1)) in $LOG_DIR" >&2
for ((i = 0; i < NPROC; i++)); do
  if ((i == 0)); then
    JAX_PROCESS_ID=$i "$PYTHON" -m "$MODULE" "$@" > >(tee "$LOG_DIR/process_0.log") 2>&1 &
  else
    JAX_PROCESS_ID=$i "$PYTHON" -m "$MODULE" "$@" >"$LOG_DIR/process_$i.log" 2>&1 &
  fi
  PIDS+=("$!")
done

# Poll instead of `wait -n` so the script knows which process ended first (bash < 5.1).
declare -A STATUS=()
FIRST_FAIL=0
FAIL_TIME=0
while ((${#STATUS[@]} < NPROC)); do
  for i in "${!PIDS[@]}"; do
    [[ -n "${STATUS[$i]:-}" ]] && continue
    pid="${PIDS[$i]}"
    if ! kill -0 "$pid" 2>/dev/null; then
      rc=0
      wait "$pid" || rc=$?
      STATUS[$i]=$rc
      if ((rc != 0)); then
        echo "process $i exited with status $rc" >&2
        if ((FIRST_FAIL == 0)); then
          FIRST_FAIL=$rc
          FAIL_TIME=$SECONDS
          echo "waiting up to ${GRACE}s for the other processes to stop" >&2
        fi
      fi
    fi
  done
  if ((FIRST_FAIL != 0 && SECONDS - FAIL_TIME > GRACE)); then
    echo "killing the processes still running after ${GRACE}s" >&2
    cleanup
  fi
  sleep 0.2
done

if ((FIRST_FAIL != 0)); then
  for i in "${!PIDS[@]}"; do
    if ((STATUS[$i] != 0 && i > 0)); then
      echo "---- process $i (status ${STATUS[$i]}), last lines of $LOG_DIR/process_$i.log:" >&2
      grep -v "^    @ " "$LOG_DIR/process_$i.log" | tail -n 15 >&2
    fi
  done
  exit "$FIRST_FAIL"
fi
