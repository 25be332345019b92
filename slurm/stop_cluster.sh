#!/usr/bin/env bash
# Stop the local SLURM cluster started by slurm/start_cluster.sh: slurmd, slurmctld, slurmdbd,
# mariadbd and munged, each through its pid file (never by process name), and remove the pid
# files (slurmctld leaves a stale one). Packages, configs, the accounting database and the job
# state stay, so start_cluster.sh brings the same cluster back.
#
#   sudo slurm/stop_cluster.sh
#
# Job steps still running (slurmstepd) are not stopped: cancel jobs first (`scancel -u $USER`).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/cluster_lib.sh
source "$HERE/cluster_lib.sh"

[[ $EUID -eq 0 ]] || fail 2 "run as root: the daemons belong to root, slurm, mysql and munge"

stop_daemon "$SLURMD_PID" slurmd
stop_daemon "$SLURMCTLD_PID" slurmctld
stop_daemon "$SLURMDBD_PID" slurmdbd
stop_daemon "$MARIADB_PID" mariadbd 60
stop_daemon "$MUNGED_PID" munged
say "local SLURM cluster stopped"
