#!/usr/bin/env bash
# Run scorejax on one or several GPU hosts: one process per host, each driving all its GPUs.
#
#   launch/gpu_hosts.sh sync HOSTS              copy the committed repository (git archive HEAD)
#                                               to REMOTE_DIR on every host and install it with
#                                               jax[cuda12] in REMOTE_DIR/.venv
#   launch/gpu_hosts.sh run HOSTS -- ARGS...    run `python -m experiments.main ARGS` on every
#                                               host at once, joined by JAX's distributed runtime
#
# HOSTS is a comma-separated list of ssh destinations (user@host or ~/.ssh/config names);
# the first one hosts the coordinator and becomes process 0. The workdir (--workdir=...) must be
# on a file system every host sees (NFS, Lustre, a mounted bucket), since Orbax writes one
# checkpoint from all processes. Relaunching the same command resumes from the last checkpoint.
#
# Settings (environment variables):
#   REMOTE_DIR        repository location on the hosts (default: scorejax, relative to $HOME)
#   COORDINATOR       address the other hosts use to reach the first host (default: its name
#                     as seen from that host, `hostname -f`)
#   PORT              coordinator port on the first host (default 12355; must be reachable)
#   CUDA_EXTRA        jax extra installed by `sync` (default cuda12; cuda13 for CUDA 13 drivers)
#
# One host with several GPUs needs no launcher: `.venv/bin/python -m experiments.main ...` uses
# every local GPU in one process. Under Slurm, `srun --ntasks-per-node=1 .venv/bin/python -m
# experiments.main ...` works without this script (JAX reads the layout from Slurm).
#
# Example (two hosts with 8 GPUs each = one 16-GPU mesh):
#   launch/gpu_hosts.sh sync gpu-a,gpu-b
#   launch/gpu_hosts.sh run gpu-a,gpu-b -- --config=configs/score_matching_cifar10.py:default \
#       --workdir=/shared/runs/sm_cifar10
set -euo pipefail

usage() { sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REMOTE_DIR="${REMOTE_DIR:-scorejax}"
PORT="${PORT:-12355}"
CUDA_EXTRA="${CUDA_EXTRA:-cuda12}"
SSH=(ssh -o BatchMode=yes)

cmd="${1:-}"
[[ -z "$cmd" || "$cmd" == "-h" || "$cmd" == "--help" ]] && usage 0
shift
hosts_arg="${1:?usage: launch/gpu_hosts.sh $cmd HOSTS ...}"
shift
IFS=, read -r -a HOSTS <<<"$hosts_arg"

case "$cmd" in
  sync)
    archive="$(mktemp -d)/scorejax.tar.gz"
    git -C "$REPO" archive --format=tar.gz -o "$archive" HEAD
    for host in "${HOSTS[@]}"; do
      echo "== $host: installing $(git -C "$REPO" rev-parse --short HEAD) in ~/$REMOTE_DIR" >&2
      scp -o BatchMode=yes "$archive" "$host:scorejax.tar.gz"
      "${SSH[@]}" "$host" "set -e
        mkdir -p $REMOTE_DIR && tar -xzf scorejax.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR
        [ -x .venv/bin/python ] || python3 -m venv .venv
        .venv/bin/pip install -q --upgrade pip
        .venv/bin/pip install -q -e '.[experiments]' 'jax[$CUDA_EXTRA]'
        .venv/bin/python -c 'import jax; print(jax.local_device_count(), jax.devices()[0].device_kind)'"
    done
    ;;

  run)
    [[ "${1:-}" == "--" ]] && shift
    [[ $# -gt 0 ]] || { echo "usage: launch/gpu_hosts.sh run HOSTS -- --config=... --workdir=..." >&2; exit 2; }
    coordinator="${COORDINATOR:-$("${SSH[@]}" "${HOSTS[0]}" hostname -f)}"
    args="$(printf '%q ' "$@")"
    n=${#HOSTS[@]}
    pids=()
    for i in "${!HOSTS[@]}"; do
      host="${HOSTS[$i]}"
      # -tt: closing this script's ssh connection (Ctrl-C) hangs up the remote process too.
      (
        "${SSH[@]}" -tt "$host" "cd $REMOTE_DIR && JAX_COORDINATOR_ADDRESS=$coordinator:$PORT \
JAX_NUM_PROCESSES=$n JAX_PROCESS_ID=$i exec .venv/bin/python -m experiments.main $args \
--distributed=on" 2>&1 | sed -u -e 's/\r$//' -e "s/^/[$i $host] /"
      ) &
      pids+=("$!")
    done
    trap 'kill "${pids[@]}" 2>/dev/null || true; exit 130' INT TERM
    status=0
    for pid in "${pids[@]}"; do
      rc=0
      wait "$pid" || rc=$?
      ((rc == 0 || status != 0)) || status=$rc
    done
    exit "$status"
    ;;

  *)
    echo "unknown command '$cmd'" >&2
    usage 2
    ;;
esac
