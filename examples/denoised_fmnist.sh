#!/usr/bin/env bash
# Denoised smoothing on Fashion-MNIST under DSSN noise (sigma 0.5), as reported in the README:
# a clean classifier, a DnCNN trained with mse and one trained with the stability objective against the clean
# classifier, then the clean classifier certified alone and behind each denoiser on the same test images.
set -euo pipefail
OUT=${OUT:-checkpoints/denoised-fmnist}
SC="uv run --frozen smoothcore"
DEN="--weight-decay 0 --arch dncnn --arch-param depth=6 --arch-param channels=32 --noise dssn --sigma 0.5 --train-limit 20000 --batch-size 64"
CERT="--noise dssn --sigma 0.5 --skip 50 --limit 200 --max-batch 2048"
$SC train-classifier --noise none --epochs 2 --out $OUT/clean --overwrite
$SC train-denoiser $DEN --objective mse --epochs 3 --out $OUT/den-mse --overwrite
$SC train-denoiser $DEN --objective stability --classifier $OUT/clean/checkpoint.pt --epochs 3 --out $OUT/den-stab --overwrite
$SC certify $OUT/clean $CERT --tag alone --overwrite
$SC certify $OUT/clean $CERT --denoiser $OUT/den-mse/denoiser_best.pt --tag mse-denoiser --overwrite
$SC certify $OUT/clean $CERT --denoiser $OUT/den-stab/denoiser_best.pt --tag stability-denoiser --overwrite
$SC report $OUT/clean --radii 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8
