#!/usr/bin/env bash
# The wheels the GPU machines lack, fetched where PyPI is reachable, for their Python 3.12
# on x86-64, into .wheels/ (ignored by git; it travels with the working tree to the GPU
# machine, where benchmarks/device_check.sh installs them with no network):
#   bash benchmarks/fetch_wheels.sh
# Those machines have torch, torchvision, xarray, numpy, scipy, matplotlib, pandas, pyyaml,
# tqdm, requests, attrs, pytest and hypothesis; they lack zarr (and numcodecs, donfig,
# google-crc32c), mnist1d and jsonschema (and referencing, jsonschema-specifications,
# rpds-py). The versions are those the tests pass with here. Snakemake is not needed there.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .wheels \
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 mnist1d==0.0.2.post1 \
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
ls .wheels
