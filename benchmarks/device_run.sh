#!/usr/bin/env bash
# The checks that need the lent GPU machine (CUDA, 16 cores), in one call of the device tool.
#
#   carry: .whl (gymnasium, Farama-Notifications, stable-baselines3, tyro and its needs, as wheels
#          for that machine's Python 3.12) and .dev (fastvec's extension built here for CPython 3.12,
#          used only if building it there fails)
#   run:   bash benchmarks/device_run.sh [part ...]     (no part: all of them, in this order)
#
# Parts: facts, tests (the ppo tests with torch seeing CUDA, so device "auto" is cuda), train
# (ppo.train on the CPU, then --device cuda with and without --amp), scaling (the CartPole and
# 1 ms studies of issue 14 in interleaved rounds), layouts (issue 12's double-buffered rollouts,
# policy on CPU and on CUDA), async-solve (ppo.train's time to solve with and without
# --async-envs, 64 envs of a 25 us CartPole, interleaved seeds; not run yet: about 3 minutes). Every part runs under its own time limit and a failing part does not stop the others;
# everything goes to $OUT/all.log and each study's markdown and JSON to $OUT.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/fastvec-device}
mkdir -p "$OUT"
LOG=$OUT/all.log
PY=${PY:-python3}
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(facts tests train scaling layouts async-solve)

step() { # step NAME SECONDS COMMAND...
    local name=$1 limit=$2 began=$SECONDS rc
    shift 2
    echo "=== $name: $* ($(date +%T))" | tee -a "$LOG"
    timeout -k 5 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - began)) s" | tee -a "$LOG"
}

# set-up: the carried wheels, then the extension (built here; the carried build if that fails)
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1 || { echo "wheels did not install"; tail -20 "$LOG"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
if ! $PY setup.py build_ext --inplace -q >>"$LOG" 2>&1; then
    echo "building the extension failed; using the carried build" | tee -a "$LOG"
    cp .dev/_kernels.cpython-312-x86_64-linux-gnu.so fastvec/
fi
$PY -c "import fastvec, torch; print('kernels', fastvec.KERNELS, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$LOG"

for part in "${parts[@]}"; do
    case $part in
    facts)
        { nproc; lscpu | grep -E 'Model name|^CPU\(s\)|Thread|NUMA node\(s\)'; nvidia-smi -L; df -h /dev/shm | tail -1
          $PY -c "import numpy, gymnasium, stable_baselines3; print('numpy', numpy.__version__, 'gymnasium', gymnasium.__version__, 'sb3', stable_baselines3.__version__)"
        } 2>&1 | tee -a "$LOG" ;;
    tests)
        step cuda-tests 100 $PY -m pytest -q -p no:cacheprovider -rfEs tests/test_ppo_storage.py tests/test_ppo_train.py \
            tests/test_ppo_smoke.py tests/test_ppo_async.py tests/test_ppo_checkpoint.py tests/test_ppo_agent.py \
            tests/test_ppo_distributed.py
        step cuda-tests-distributed 70 $PY -m pytest -q -p no:cacheprovider -rfEs -x tests/test_ppo_distributed_run.py ;;
    train)
        step train-cpu 80 $PY -m ppo.train --device cpu --runs-dir /tmp/runs --no-progress
        step train-cuda 80 $PY -m ppo.train --device cuda --runs-dir /tmp/runs --no-progress
        step train-cuda-amp 80 $PY -m ppo.train --device cuda --amp --runs-dir /tmp/runs --no-progress ;;
    scaling)
        step scaling 230 $PY -m benchmarks.interleaved --variant head=fastvec --variant sb3=sb3-subproc \
            --variant single=serial#1 --workload CartPole-v1:16 --workload CartPole-v1:64 --workload cpu1ms:64 \
            --rounds 3 --seconds 1 --repeats 2 --out "$OUT/scaling16" ;;
    layouts)
        step layouts-cpu 60 $PY -m benchmarks.rollout_layouts --device cpu --num-envs 64 --rounds 3 --rollouts 8 \
            --out "$OUT/layouts-cpu.md"
        step layouts-cuda 60 $PY -m benchmarks.rollout_layouts --device cuda --num-envs 64 --rounds 3 --rollouts 8 \
            --out "$OUT/layouts-cuda.md" ;;
    async-solve)
        step async-solve 240 $PY -m benchmarks.ppo_solve --async-envs --total-envs 64 --seeds 1 2 \
            --env-id benchmarks.workloads:fastvec-bench/CartPole25us-v1 --out "$OUT" ;;
    *) echo "unknown part $part" ;;
    esac
done
ls /dev/shm | head | tee -a "$LOG"
grep -E "^=== .*exit|passed|failed|solved|Error" "$LOG" | tail -40
