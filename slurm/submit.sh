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

prog=submit
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/options.sh
source "$here/../launch/options.sh"
config="" nodes=1 gpus_per_node=1 time="" dry_run=0
overrides=()
parse_options "config nodes gpus-per-node time" "$@"
[[ -n $config ]] || die "--config FILE is required"

# the resolved config's run.dir and phases; a bad config stops here, not in the queue
plan=$("${DCL_PYTHON:-python}" -c '
import sys
from dcl_dist.config import load_config
from dcl_dist.errors import ConfigError
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
	cmd=(sbatch --parsable --job-name "dcl-$phase" --nodes "$nodes" --ntasks-per-node "$gpus_per_node" --gpus-per-node "$gpus_per_node")
	[[ -z $time ]] || cmd+=(--time "$time")
	[[ -z $previous ]] || cmd+=(--dependency "afterok:$previous" --kill-on-invalid-dep=yes)
	cmd+=("$here/phase.sbatch" "$phase" "$config" "${overrides[@]}")
	show_command "${cmd[@]}"
	if ((dry_run)); then
		previous="<$phase>"
		continue
	fi
	id=$("${cmd[@]}")
	previous=${id%%;*} # --parsable prints "id" or "id;cluster"
	echo "$phase: job $previous"
done
