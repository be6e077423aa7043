#!/usr/bin/env bash
# Submit a variant's phases as a chain of SLURM jobs, one slurm/phase.sbatch per phase (dae -> cl -> ft for
# three_phase), each starting once the previous one has succeeded (afterok) and all sharing the config's run.dir.
# The config is checked here first; each sbatch command is printed, then its job id.
#
#   slurm/submit.sh --config FILE [--nodes N] [--gpus-per-node G] [--time HH:MM:SS] [--dry-run] [key=value ...]
#
# Other sbatch options come from SLURM's own variables: SBATCH_ACCOUNT, SBATCH_PARTITION, SBATCH_QOS, ...
# A job that is preempted or reaches its time limit checkpoints, requeues itself and resumes; the next one waits.
set -euo pipefail

die() {
	echo "submit: $*" >&2
	exit 2
}

config="" nodes=1 gpus=1 time="" dry_run=0
overrides=()
while (($#)); do
	case "$1" in
	--config | --nodes | --gpus-per-node | --time)
		(($# >= 2)) || die "$1 needs a value"
		case "$1" in
		--config) config=$2 ;;
		--nodes) nodes=$2 ;;
		--gpus-per-node) gpus=$2 ;;
		--time) time=$2 ;;
		esac
		shift 2
		;;
	--dry-run)
		dry_run=1
		shift
		;;
	-h | --help)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
		exit 0
		;;
	--*) die "unknown option $1 (slurm/submit.sh --help lists them)" ;;
	*)
		overrides+=("$1")
		shift
		;;
	esac
done
[[ -n $config ]] || die "--config FILE is required"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# the resolved config's run.dir and phases; a bad config stops here, not in the queue
plan=$("${DCL_PYTHON:-python}" -c '
import sys
from dcl_dist.config import ConfigError, load_config
try:
    cfg = load_config(sys.argv[1], sys.argv[2:])
except ConfigError as e:
    sys.exit(f"submit: {e}")
print(cfg.run.dir, *cfg.phases())
' "$config" "${overrides[@]}")
read -r run_dir phases <<<"$plan"
echo "run directory $run_dir, phases: $phases"

previous=""
for phase in $phases; do
	cmd=(sbatch --parsable --job-name "dcl-$phase" --nodes "$nodes" --ntasks-per-node "$gpus" --gpus-per-node "$gpus")
	[[ -z $time ]] || cmd+=(--time "$time")
	[[ -z $previous ]] || cmd+=(--dependency "afterok:$previous" --kill-on-invalid-dep=yes)
	cmd+=("$here/phase.sbatch" "$phase" "$config" "${overrides[@]}")
	printf '+'
	printf ' %q' "${cmd[@]}"
	echo
	if ((dry_run)); then
		previous="<$phase>"
		continue
	fi
	id=$("${cmd[@]}")
	previous=${id%%;*} # --parsable prints "id" or "id;cluster"
	echo "$phase: job $previous"
done
