#!/usr/bin/env bash
# Development checks on the GPU machine, in one call: selected GPU tests, kernel sweeps and an
# A/B decode/prefill bench. Results under $OUT. Stages (env STAGES, space separated):
#   tests  : pytest -m gpu on $TESTS (default: the decode ops, fast model, runner tests)
#   gemv   : benchmarks/gemv_sweep.py (budget GEMV_S, default 170 s)
#   wkv    : benchmarks/wkv7_sweep.py
#   overhead: benchmarks/decode_overhead.py on $OVERHEAD_SHAPES (host vs GPU time, top kernels)
#   flake  : the graph-replay-vs-eager runner test, $FLAKE_N times
#   barrier: benchmarks/grid_barrier.py (grid-barrier cost, persistent vs per-launch GEMV chains)
#   sparse : benchmarks/sparse_sweep.py (sparse FFN value tiles vs the dense GEMV; SPARSE_S budget)
#   dab    : benchmarks/decode_ab.py (batch-1 decode variants in one process per shape; DAB_SHAPES, DAB_VARIANTS)
#   ab     : rwkvrt bench per shape in $SHAPES with each setting in $AB (env assignments, ';' separated)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
STAGES=${STAGES:-"tests gemv ab"}
TESTS=${TESTS:-"tests/ops/test_decode_ops.py tests/models/test_fast_model.py tests/engine/test_runner.py"}
SHAPES=${SHAPES:-"0.1B 1.5B 7.2B"}
AB=${AB:-"RWKVRT_DECODE_FUSED=0;RWKVRT_DECODE_FUSED=1"}
BENCH_ARGS=${BENCH_ARGS:-"--pp 512 --tg 64 --batch 1 --warmup 1 --repeat 2"}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
for st in $STAGES; do
  case $st in
    tests)
      echo "== tests"; timeout -k 5 ${TESTS_S:-110} python3 -m pytest -m gpu -q -p no:cacheprovider $TESTS > "$OUT/pytest.log" 2>&1
      echo "pytest exit $?: $(tail -1 "$OUT/pytest.log")"; grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -20;;
    gemv)
      echo "== gemv sweep"; timeout -k 5 $(( ${GEMV_S:-170} + 30 )) python3 benchmarks/gemv_sweep.py --budget-s ${GEMV_S:-170} \
        > "$OUT/gemv.jsonl" 2> "$OUT/gemv.err"; echo "exit $?"; tail -20 "$OUT/gemv.err";;
    wkv)
      echo "== wkv7 sweep"; timeout -k 5 ${WKV_S:-200} python3 benchmarks/wkv7_sweep.py > "$OUT/wkv.jsonl" 2> "$OUT/wkv.err"
      echo "exit $?"; tail -25 "$OUT/wkv.err"; tail -25 "$OUT/wkv.jsonl" | grep -v '^{' ;;
    overhead)
      echo "== decode overhead"; timeout -k 5 ${OVERHEAD_S:-150} python3 benchmarks/decode_overhead.py --shapes ${OVERHEAD_SHAPES:-0.1B,1.5B,7.2B} \
        > "$OUT/overhead.txt" 2>&1; echo "exit $?"; grep -E "^## |Self CUDA time total" "$OUT/overhead.txt";;
    barrier)
      echo "== grid barrier / persistent GEMV chain"; timeout -k 5 ${BARRIER_S:-200} python3 benchmarks/grid_barrier.py \
        > "$OUT/barrier.jsonl" 2> "$OUT/barrier.err"; echo "exit $?"; grep -v Warning "$OUT/barrier.err" | tail -20;;
    sparse)
      echo "== sparse FFN value sweep"; timeout -k 5 $(( ${SPARSE_S:-120} + 60 )) python3 benchmarks/sparse_sweep.py --budget-s ${SPARSE_S:-120} \
        > "$OUT/sparse.jsonl" 2> "$OUT/sparse.err"; echo "exit $?"; grep -v Warning "$OUT/sparse.err" | tail -60;;
    dab)
      echo "== decode A/B"; timeout -k 5 ${DAB_S:-300} python3 benchmarks/decode_ab.py --shapes ${DAB_SHAPES:-0.1B,1.5B,7.2B} \
        ${DAB_VARIANTS:+--variants $DAB_VARIANTS} > "$OUT/dab.jsonl" 2> "$OUT/dab.err"; echo "exit $?"; grep -v Warning "$OUT/dab.err" | tail -40;;
    flake)
      echo "== graph replay vs eager x ${FLAKE_N:-4}"
      for i in $(seq ${FLAKE_N:-4}); do
        timeout -k 5 60 python3 -m pytest -q -p no:cacheprovider -rxX "tests/engine/test_runner.py::test_gpu_graph_replay_equals_eager" 2>&1 | tail -1
      done;;
    ab)
      echo "== A/B bench"
      for shape in $SHAPES; do
        IFS=';' read -ra settings <<< "$AB"
        for s in "${settings[@]}"; do
          env $s timeout -k 5 ${AB_S:-90} python3 -m rwkvrt bench --shape "$shape" --strategy "cuda fp16" $BENCH_ARGS --json-only \
            > "$OUT/ab.tmp" 2>> "$OUT/ab.err"
          echo "rc=$? $shape [$s]"
          python3 -c "
import json,sys
for l in open('$OUT/ab.tmp'):
    if not l.startswith('{'): continue
    r=json.loads(l); r['ab']='$s'; print(json.dumps(r))
    if r.get('impl')=='rwkvrt' and 'tokens_per_s' in r:
        print('   ', r.get('test'), 'b', r.get('batch'), round(r['tokens_per_s'],1), 'tok/s', r.get('pct_of_decode_floor', r.get('pct_of_prefill_floor')), '%', r.get('path',''), file=sys.stderr)
" >> "$OUT/ab.jsonl"
        done
      done;;
  esac
done
