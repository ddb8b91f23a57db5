#!/usr/bin/env bash
# The checks that need a GPU, in one call of at most 5 minutes on one GPU:
#   bash benchmarks/device_check.sh
# It installs the package (the README's test set-up), prints the GPU, runs every test
# that needs CUDA, the pack benchmark (a stacked pack of 256 MNIST-1D CNNs against 256
# runs in turn) and one epoch of a pack of 8 CIFAR-shaped ResNet-20s.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.14.1 torchvision==0.29.1 >/dev/null
python -m pip install -q -e '.[test]' >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== CUDA tests"
python -m pytest -q -p no:cacheprovider -rs tests/test_pack.py tests/test_activations.py tests/test_forgetting.py \
  -k "cuda or gpu or device" 2>&1 | tail -15
echo "== packs of MNIST-1D CNNs, 1 epoch each"
timeout 150 python benchmarks/bench_pack.py --device cuda --ks 1,16,64,256 --epochs 1 --ways turn,sequential,stacked
echo "== a pack of 8 ResNet-20s, one epoch of 50,000 CIFAR-shaped examples, batch 128"
timeout 90 python benchmarks/bench_pack.py --device cuda --ks 8 --epochs 1 --ways sequential,stacked --batch-size 128 \
  --data '{"name": "synthetic", "args": {"shape": [3, 32, 32], "num_train": 50000, "num_test": 1000}}' \
  --model '{"name": "resnet20"}'
