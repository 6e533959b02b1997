#!/usr/bin/env bash
# The whole CIFAR-10 pipeline of the paper (WideResNet-40-2, DSSN, plain and stabilized, certify, report) on a
# small fixture in the real cifar-10-batches-py format: minutes on a CPU. For the real dataset drop --data-dir
# (or point it at cifar-10-batches-py) and the size options; see the README.
set -euo pipefail
OUT=${OUT:-checkpoints/cifar10-fixture}
uv run --frozen python examples/cifar10_fixture.py data/cifar10-fixture --per-batch 100 --test 100
uv run --frozen smoothcore sweep --dataset cifar10 --data-dir data/cifar10-fixture --model wrn40 --noises dssn --sigmas 0.25 \
  --stability both --epochs 2 --train-option batch_size=64 --train-option eval_limit=100 \
  --certify-option limit=20 --certify-option skip=5 --out "$OUT" --radii 0,0.1,0.2,0.3,0.4
