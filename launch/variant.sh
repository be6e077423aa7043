#!/usr/bin/env bash
# Train a whole variant (or one phase of it) on one node or many, through the deepspeed launcher or torchrun.
# Prints the exact command, then runs it in this process (signals reach the launcher and the ranks directly).
#
#   launch/variant.sh --config FILE [options] [key=value ...]
#
#   one node, every GPU        launch/variant.sh --config my.yaml
#   one node, 4 GPUs           launch/variant.sh --config my.yaml --gpus 4
#   many nodes over ssh        launch/variant.sh --config my.yaml --hostfile launch/hostfile.example   (on node 0)
#   many nodes, each started   NODE_RANK=i MASTER_ADDR=node0 launch/variant.sh --config my.yaml --hostfile H
#                              NODE_RANK=i MASTER_ADDR=node0 launch/variant.sh --config my.yaml --launcher torchrun --nodes N
#
#   --config FILE       the run's YAML (required); key=value arguments override it
#   --phase P           only phase P of the variant (dae, cl, ft, joint); launch/<phase>.sh set it
#   --gpus N            ranks per node; default: the GPUs nvidia-smi lists, else 1
#   --nodes N           nodes (env NNODES); with a hostfile, its first N hosts
#   --hostfile FILE     deepspeed hostfile, one "hostname slots=GPUS" line per node
#   --node-rank I       this node's index (env NODE_RANK): each node starts its own ranks, no ssh
#   --master-addr A     node 0's address (env MASTER_ADDR)
#   --master-port P     rendezvous port (env MASTER_PORT, default 29500)
#   --launcher L        deepspeed (default) or torchrun (env DCL_LAUNCHER)
#   --dry-run           print the command, run nothing
#
# Ctrl-C (or SIGTERM to the process group) ends the current step and writes a checkpoint; each rank says which and
# exits 75 (the launchers give their ranks 30 s, and report a status of their own). The same command resumes.
set -euo pipefail

prog=launch
# shellcheck source=launch/options.sh
source "$(dirname "${BASH_SOURCE[0]}")/options.sh"
config="" phase="" gpus="" hostfile="" launcher="${DCL_LAUNCHER:-deepspeed}" dry_run=0
nodes="${NNODES:-}" node_rank="${NODE_RANK:-}" master_addr="${MASTER_ADDR:-}" master_port="${MASTER_PORT:-29500}"
overrides=()
parse_options "config phase gpus nodes hostfile node-rank master-addr master-port launcher" "$@"
[[ -n $config ]] || die "--config FILE is required"
[[ -z $hostfile || -f $hostfile ]] || die "hostfile $hostfile does not exist"
gpus_given=$gpus
if [[ -z $gpus ]]; then
	gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
	((gpus > 0)) || gpus=1
fi

train=(train --config "$config")
[[ -z $phase ]] || train+=(--phase "$phase")
train+=("${overrides[@]}")

case $launcher in
deepspeed)
	cmd=(deepspeed --master_port "$master_port")
	if [[ -n $hostfile ]]; then
		cmd+=(--hostfile "$hostfile")
		[[ -z $nodes ]] || cmd+=(--num_nodes "$nodes")
		[[ -z $gpus_given ]] || cmd+=(--num_gpus "$gpus")
		[[ -z $master_addr ]] || cmd+=(--master_addr "$master_addr")
		if [[ -n $node_rank ]]; then
			[[ -n $master_addr ]] || die "NODE_RANK without ssh needs node 0's address: MASTER_ADDR or --master-addr"
			cmd+=(--no_ssh --node_rank "$node_rank")
		fi
	else
		[[ -z $nodes || $nodes == 1 ]] || die "$nodes nodes with deepspeed need --hostfile (or use --launcher torchrun)"
		cmd+=(--num_gpus "$gpus")
	fi
	cmd+=(--module dcl_dist.cli)
	;;
torchrun)
	[[ -z $hostfile ]] || die "--hostfile is for the deepspeed launcher; torchrun takes --nodes, NODE_RANK and MASTER_ADDR"
	cmd=(torchrun --nnodes "${nodes:-1}" --nproc_per_node "$gpus" --master_port "$master_port")
	if [[ ${nodes:-1} != 1 ]]; then
		[[ -n $master_addr && -n $node_rank ]] ||
			die "torchrun on $nodes nodes needs MASTER_ADDR and NODE_RANK (or --master-addr, --node-rank) on every node"
		cmd+=(--node_rank "$node_rank" --master_addr "$master_addr")
	fi
	cmd+=(-m dcl_dist.cli)
	;;
*) die "--launcher $launcher: use deepspeed or torchrun" ;;
esac
cmd+=("${train[@]}")

show_command "${cmd[@]}"
((dry_run)) && exit 0
exec "${cmd[@]}"
