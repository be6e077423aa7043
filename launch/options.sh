# shellcheck shell=bash
# Sourced by launch/variant.sh and slurm/submit.sh: their option parsing, errors and printed commands.
# The sourcing script sets `prog` (the name its errors start with) and the variables the options fill.
# shellcheck disable=SC2154,SC2034 # prog, dry_run and the options' variables belong to the sourcing script

die() {
	echo "$prog: $*" >&2
	exit 2
}

# parse_options "config nodes ..." ARGS...: each --NAME VALUE of the list sets the variable NAME (dashes become
# underscores), --dry-run sets dry_run=1, --help prints the calling script's header comment, and every other
# argument is a key=value override, appended to the array `overrides`.
parse_options() {
	local names=" $1 " name
	shift
	while (($#)); do
		if [[ $1 == --* && $names == *" ${1#--} "* ]]; then
			(($# >= 2)) || die "$1 needs a value"
			name=${1#--}
			printf -v "${name//-/_}" '%s' "$2"
			shift 2
		elif [[ $1 == --dry-run ]]; then
			dry_run=1
			shift
		elif [[ $1 == -h || $1 == --help ]]; then
			sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
			exit 0
		elif [[ $1 == --* ]]; then
			die "unknown option $1 ($0 --help lists them)"
		else
			overrides+=("$1")
			shift
		fi
	done
}

# show_command ARGS...: the command as one line a shell would read back, after "+ "
show_command() {
	printf '+'
	printf ' %q' "$@"
	echo
}
