#!/usr/bin/env bash
# The GPU benchmarks of issue 5 in one shot, on the device machine (no network there; its python3 already holds
# torch, torchvision and every dependency of smoothcore). Nothing is installed: the two plugin packages are put on the
# import path under their installed names. RESULTS.md and the log are copied to $OUT (when set) for the caller.
#
#     bash benchmarks/device.sh            # through the device tool: run(command="bash benchmarks/device.sh")
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
names=$(mktemp -d)
ln -s "$PWD/plugins" "$names/smoothcore_plugins"
ln -s "$PWD/denoisers" "$names/smoothcore_denoisers"
export PYTHONPATH="$PWD:$names${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import torch, torchvision, pluggy, click, scipy, statsmodels, pandas, rich, matplotlib, smoothcore;
print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
status=0
$PY -m benchmarks.gpu "$@" 2>&1 | tee "${OUT:-$names}/gpu.log" || status=$?
[ -n "${OUT:-}" ] && cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
rm -rf "$names"
exit $status
