#!/usr/bin/env bash
# The checks that need a GPU, in one call of at most 10 minutes on one GPU. The GPU machines
# reach no package registry: first, where PyPI is reachable, `bash benchmarks/fetch_wheels.sh`
# (the wheels they lack, into .wheels/); then, with .wheels carried along,
#   bash benchmarks/device_check.sh
# It installs those wheels (no network) into /tmp/site and puts them and the project on
# PYTHONPATH, prints the GPU, runs every test that needs CUDA (resume on CUDA among them),
# counts what a pack dispatches per epoch (bench_dispatch.py), and times packs of up to 256
# MNIST-1D CNNs and a pack of 8 CIFAR-shaped ResNet-20s (bench_pack.py).
# DEVICE=cpu KS=1,4 rehearses it on a machine without a GPU.
set -uo pipefail  # a step that fails or times out is reported, and the next one runs
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
KS=${KS:-1,16,64,256}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .wheels/*.whl \
  || { echo "no wheels to install: run bash benchmarks/fetch_wheels.sh where PyPI is reachable, carry .wheels"; exit 1; }
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch, zarr, xarray, mnist1d, jsonschema, workflow.jobs; print('torch', torch.__version__, 'zarr', zarr.__version__, 'xarray', xarray.__version__)" || exit 1
if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
step() { echo "== $1"; shift; "$@" || echo "== (that step failed or timed out: status $?)"; }
step "CUDA tests" python3 -m pytest -q -p no:cacheprovider -rs tests/test_pack.py tests/test_activations.py \
  tests/test_forgetting.py tests/test_checkpoint.py -k "cuda or gpu or device"
step "ops and host reads per epoch of a pack" timeout 240 python3 benchmarks/bench_dispatch.py --device "$DEVICE" --ks "$KS"
step "packs of MNIST-1D CNNs, 1 epoch each" timeout 150 python3 benchmarks/bench_pack.py --device "$DEVICE" --ks "$KS" \
  --epochs 1 --ways turn,sequential,stacked
if [ "$DEVICE" = cuda ]; then
  step "a pack of 8 ResNet-20s, one epoch of 50,000 CIFAR-shaped examples, batch 128" timeout 90 \
    python3 benchmarks/bench_pack.py --device "$DEVICE" --ks 8 --epochs 1 --ways sequential,stacked --batch-size 128 \
    --data '{"name": "synthetic", "args": {"shape": [3, 32, 32], "num_train": 50000, "num_test": 1000}}' \
    --model '{"name": "resnet20"}'
fi
