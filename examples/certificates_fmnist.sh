#!/usr/bin/env bash
# Standard, two-sided and box-constrained certificates (docs/certificates.md) of the same Fashion-MNIST models:
# uniform and SSN noise at sigma 0.5 and 1.0, Monte-Carlo with the same per-image draws for every certificate.
set -euo pipefail
OUT=${OUT:-checkpoints/certificates-fmnist}
SC="uv run --frozen smoothcore"
MC="--n0 64 --n 1000 --alpha 0.001 --skip 50 --limit 200 --max-batch 2048"
for noise in uniform ssn; do
  for sigma in 0.5 1.0; do
    run=$OUT/${noise}_sigma${sigma}
    $SC train-classifier --noise $noise --sigma $sigma --epochs 2 --out $run --overwrite
    for cert in standard two-sided box; do
      $SC certify $run $MC --certificate $cert --tag $cert --overwrite
    done
  done
done
$SC report $OUT/*/certify_*.csv --radii 0,0.25,0.5,0.75,1.0,1.5,2.0 --no-envelope
