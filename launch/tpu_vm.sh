#!/usr/bin/env bash
# Run scorejax on a Cloud TPU VM or a multi-host TPU slice (every worker runs one process).
#
#   launch/tpu_vm.sh COMMAND [ARGS...]
#
# Commands, in the order a first run uses them:
#   bucket               create the Cloud Storage bucket (hierarchical namespace: atomic folder
#                        renames, which Orbax's atomic checkpoint commits rely on)
#   create               create the TPU VM / slice
#   setup                copy the committed repository (git archive HEAD) to every worker,
#                        install it with jax[tpu] in ~/scorejax/.venv, and mount the bucket at
#                        ~/bucket on every worker with Cloud Storage FUSE
#   prepare-data NAME    build TFDS dataset NAME (e.g. cifar10) as array_record into
#                        ~/bucket/tensorflow_datasets (on worker 0; needs TensorFlow, installed
#                        in a separate venv there)
#   run -- ARGS...       run `python -m experiments.main ARGS --workdir=~/bucket/runs/$RUN_NAME`
#                        on all workers at once (--worker=all); relaunching the same command
#                        resumes from the run's last checkpoint
#   ssh [WORKER]         open a shell on a worker (default 0)
#   delete               delete the TPU VM / slice
#
# Settings (environment variables):
#   TPU_NAME          (required) name of the TPU VM
#   ZONE              (required) e.g. us-central2-b (v4), us-east5-a (v5p), us-east1-d (v6e)
#   ACCELERATOR_TYPE  default v4-8; a slice such as v4-32 has 4 workers
#   RUNTIME_VERSION   default tpu-ubuntu2204-base (v4); v2-alpha-tpuv5 (v5p),
#                     v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv6e (v6e)
#   BUCKET            (required for bucket/setup/prepare-data/run) bucket name, without gs://
#   RUN_NAME          (run) workdir name under ~/bucket/runs; default: the config's file name
#   PROJECT           Google Cloud project (default: gcloud's configured project)
#   SPOT=1            (create) use Spot capacity (cheaper, may be preempted: relaunch `run`)
#
# Example: CIFAR-10 score matching on a v4-32 slice (4 workers x 4 chips)
#   export TPU_NAME=sj-v4 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 BUCKET=my-scorejax
#   launch/tpu_vm.sh bucket && launch/tpu_vm.sh create && launch/tpu_vm.sh setup
#   launch/tpu_vm.sh prepare-data cifar10
#   launch/tpu_vm.sh run -- --config=configs/score_matching_cifar10.py:default
#   launch/tpu_vm.sh delete
set -euo pipefail

usage() { sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"

need() {
  for v in "$@"; do
    [[ -n "${!v:-}" ]] || { echo "set \$$v (see launch/tpu_vm.sh -h)" >&2; exit 2; }
  done
}

# Common flags of every `gcloud compute tpus tpu-vm` call.
tpu_flags() {
  printf -- '--zone=%s\n' "$ZONE"
  if [[ -n "${PROJECT:-}" ]]; then printf -- '--project=%s\n' "$PROJECT"; fi
}

on_workers() {  # on_workers WORKER COMMAND: run a shell command on the worker(s) over ssh
  local worker="$1" command="$2"
  mapfile -t flags < <(tpu_flags)
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${flags[@]}" --worker="$worker" --command="$command"
}

cmd="${1:-}"
[[ -z "$cmd" || "$cmd" == "-h" || "$cmd" == "--help" ]] && usage 0
shift

case "$cmd" in
  bucket)
    need ZONE BUCKET
    region="${ZONE%-*}"
    gcloud storage buckets create "gs://$BUCKET" ${PROJECT:+--project="$PROJECT"} \
      --location="$region" --uniform-bucket-level-access --enable-hierarchical-namespace
    ;;

  create)
    need TPU_NAME ZONE
    mapfile -t flags < <(tpu_flags)
    gcloud compute tpus tpu-vm create "$TPU_NAME" "${flags[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
      --scopes=https://www.googleapis.com/auth/cloud-platform ${SPOT:+--spot}
    ;;

  setup)
    need TPU_NAME ZONE BUCKET
    archive="$(mktemp -d)/scorejax.tar.gz"
    git -C "$REPO" archive --format=tar.gz -o "$archive" HEAD
    echo "copying $(git -C "$REPO" rev-parse --short HEAD) (committed files only) to every worker" >&2
    mapfile -t flags < <(tpu_flags)
    gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":scorejax.tar.gz "${flags[@]}" --worker=all
    on_workers all "set -e
      sudo apt-get update -q
      sudo apt-get install -y -q python3-venv curl lsb-release
      if ! command -v gcsfuse >/dev/null; then
        echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list
        curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
        sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
      fi
      mkdir -p ~/bucket
      mountpoint -q ~/bucket || gcsfuse --implicit-dirs $BUCKET ~/bucket
      rm -rf ~/scorejax && mkdir -p ~/scorejax && tar -xzf ~/scorejax.tar.gz -C ~/scorejax
      cd ~/scorejax && python3 -m venv .venv
      .venv/bin/pip install -q --upgrade pip
      .venv/bin/pip install -q -e '.[experiments]' 'jax[tpu]'
      .venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"
    ;;

  prepare-data)
    need TPU_NAME ZONE BUCKET
    name="${1:?usage: launch/tpu_vm.sh prepare-data DATASET (e.g. cifar10)}"
    on_workers 0 "set -e
      mountpoint -q ~/bucket || gcsfuse --implicit-dirs $BUCKET ~/bucket
      [[ -d ~/tfds-venv ]] || python3 -m venv ~/tfds-venv
      ~/tfds-venv/bin/pip install -q tensorflow-cpu tensorflow-datasets
      ~/tfds-venv/bin/tfds build $name --file_format=array_record --data_dir=\$HOME/bucket/tensorflow_datasets"
    ;;

  run)
    need TPU_NAME ZONE BUCKET
    [[ "${1:-}" == "--" ]] && shift
    [[ $# -gt 0 ]] || { echo "usage: launch/tpu_vm.sh run -- --config=configs/<study>.py:<variant> [...]" >&2; exit 2; }
    run_name="${RUN_NAME:-}"
    if [[ -z "$run_name" ]]; then
      for a in "$@"; do
        if [[ "$a" == --config=* ]]; then
          spec="${a#--config=}"; file="$(basename "${spec%%:*}" .py)"; variant="${spec#*:}"
          run_name="$file"; [[ "$spec" == *:* ]] && run_name="${file}_${variant}"
        fi
      done
    fi
    [[ -n "$run_name" ]] || { echo "set \$RUN_NAME or pass --config=..." >&2; exit 2; }
    args="$(printf '%q ' "$@")"
    # `--distributed=on`: every worker joins JAX's distributed runtime (JAX finds the slice's
    # coordinator and process ids from the TPU metadata), or the run fails instead of running
    # one independent copy per worker.
    on_workers all "set -e
      mountpoint -q ~/bucket || gcsfuse --implicit-dirs $BUCKET ~/bucket
      cd ~/scorejax
      TFDS_DATA_DIR=\$HOME/bucket/tensorflow_datasets .venv/bin/python -m experiments.main $args --workdir=\$HOME/bucket/runs/$run_name --distributed=on"
    ;;

  ssh)
    need TPU_NAME ZONE
    mapfile -t flags < <(tpu_flags)
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${flags[@]}" --worker="${1:-0}"
    ;;

  delete)
    need TPU_NAME ZONE
    mapfile -t flags < <(tpu_flags)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" "${flags[@]}" --quiet
    ;;

  *)
    echo "unknown command '$cmd'" >&2
    usage 2
    ;;
esac
