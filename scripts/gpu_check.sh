#!/usr/bin/env bash
# One command for the GPU machine: GPU tests, then the benchmark table (rwkvrt vs the official
# rwkv package on the same random weights). Whole run fits in about 9 minutes by default.
#
#   bash scripts/gpu_check.sh            # results under $OUT (default ./gpu_out)
#
# Knobs (env): TOTAL_S (wall budget, default 530), PYTEST_S (cap on the GPU tests, 400: the whole
# GPU suite takes ~320 s on an H100 from a cold Triton cache), SKIP_PYTEST=1, SKIP_BENCH=1 (tests only;
# with a 10-minute limit per command, run the tests and the bench as two calls), SHAPES ("0.1B 1.5B 7.2B"), COMPARE_SHAPES (shapes also run with --compare rwkv,
# default all of SHAPES), PP ("512,8192"), TG (64), BATCH ("1,8,64,256"), BATCH_7_2B ("1,64,256"),
# COMPARE_PP (official prefill lengths, default PP), WARMUP (1), REPEAT (2), STRATEGY ("cuda fp16"), RWKV_CUDA_ON (1: build the official CUDA kernel).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
TOTAL_S=${TOTAL_S:-530}
PYTEST_S=${PYTEST_S:-400}
SHAPES=${SHAPES:-"0.1B 1.5B 7.2B"}
COMPARE_SHAPES=${COMPARE_SHAPES:-$SHAPES}
PP=${PP:-512,8192}
TG=${TG:-64}
BATCH=${BATCH:-1,8,64,256}
BATCH_7_2B=${BATCH_7_2B:-1,64,256}
WARMUP=${WARMUP:-1}
REPEAT=${REPEAT:-2}
STRATEGY=${STRATEGY:-cuda fp16}
export RWKV_CUDA_ON=${RWKV_CUDA_ON:-1}
export RWKVRT_GIT_SHA=${RWKVRT_GIT_SHA:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}

left() { echo $(( TOTAL_S - SECONDS )); }

# the official package (carried as a wheel; no network, no index on the device)
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/pip.log" 2>&1 || echo "pip install of .whl/ failed (see pip.log)"
fi
export PYTHONPATH=/tmp/site:src${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv >> "$OUT/env.txt" 2>&1

if [ "${SKIP_PYTEST:-0}" != 1 ]; then
  t=$(( PYTEST_S < $(left) ? PYTEST_S : $(left) ))
  echo "== pytest -m gpu (cap ${t}s)"
  timeout -k 10 "$t" python3 -m pytest -m gpu -q -p no:cacheprovider tests > "$OUT/pytest.log" 2>&1
  rc=$?; [ $rc = 124 ] && echo "pytest hit its ${t}s cap"
  echo "pytest exit $rc: $(tail -1 "$OUT/pytest.log")"
fi

[ "${SKIP_BENCH:-0}" = 1 ] && { echo "total ${SECONDS}s (bench skipped)"; exit 0; }

if [ "$RWKV_CUDA_ON" = 1 ] && [ -n "$COMPARE_SHAPES" ]; then
  # build the official CUDA kernels once (torch caches the build for the bench processes); off if it fails
  echo "== building the official rwkv CUDA kernels (cap 150s)"
  if ! timeout -k 10 $(( 150 < $(left) ? 150 : $(left) )) python3 -c "import os; os.environ['RWKV_V7_ON'] = '1'; import rwkv.model" \
      > "$OUT/rwkv_build.log" 2>&1; then
    echo "official CUDA kernel build failed or timed out (rwkv_build.log): official runs use RWKV_CUDA_ON=0"
    export RWKV_CUDA_ON=0
    # without its kernel the official prefill is a per-token Python loop: 8192 tokens take minutes
    COMPARE_PP=${COMPARE_PP:-512}
  fi
fi

if python3 -m rwkvrt bench --help >/dev/null 2>&1; then BENCH="python3 -m rwkvrt bench"; else BENCH="python3 -m rwkvrt.bench"; fi
: > "$OUT/bench.jsonl"
n_shapes=$(echo $SHAPES | wc -w)
i=0
for shape in $SHAPES; do
  i=$((i + 1))
  # split what is left evenly over the shapes still to run; bigger shapes come last and get the rest
  t=$(( $(left) / (n_shapes - i + 1) ))
  [ "$t" -lt 20 ] && { echo "skip $shape: out of time"; continue; }
  b=$BATCH; [ "$shape" = 7.2B ] && b=$BATCH_7_2B
  cmp=""; case " $COMPARE_SHAPES " in *" $shape "*) cmp="--compare rwkv --compare-pp ${COMPARE_PP:-$PP}";; esac
  echo "== bench $shape (cap ${t}s) pp=$PP tg=$TG batch=$b $cmp"
  timeout -k 10 "$t" $BENCH --shape "$shape" --strategy "$STRATEGY" --pp "$PP" --tg "$TG" --batch "$b" \
    --warmup "$WARMUP" --repeat "$REPEAT" $cmp --json-only >> "$OUT/bench.jsonl" 2>> "$OUT/bench.log"
  rc=$?; [ $rc != 0 ] && echo "bench $shape exit $rc (see bench.log)"
done
python3 scripts/gpu_check.py "$OUT/bench.jsonl" | tee "$OUT/table.md"
echo "total ${SECONDS}s"
