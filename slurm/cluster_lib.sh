# Shared by start_cluster.sh and stop_cluster.sh (sourced, never run on its own).
# Paths of the local single-node SLURM cluster: configs, pid files, logs.

SLURM_ETC=/etc/slurm
SLURM_CONF=$SLURM_ETC/slurm.conf
SLURMDBD_CONF=$SLURM_ETC/slurmdbd.conf
SLURM_LOG_DIR=/var/log/slurm
SLURM_STATE_DIR=/var/lib/slurm
MUNGE_KEY=/etc/munge/munge.key

# pid files: every daemon is started, checked and stopped through these (never by name)
MUNGED_PID=/run/munge/munged.pid
MARIADB_PID=/run/mysqld/mysqld.pid
MARIADB_SOCK=/run/mysqld/mysqld.sock
SLURMDBD_PID=/run/slurmdbd.pid
SLURMCTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid

# first line of every config file this script writes; a file without it is never overwritten
MARKER="# Written by optprobe slurm/start_cluster.sh (local single-node cluster)."

say() { echo "[slurm] $*"; }

# fail CODE MESSAGE: print the message and exit with CODE
#   1 a step failed, 2 not root, 3 packages missing and no apt-get, 4 a foreign SLURM config
fail() {
  local code=$1
  shift
  echo "[slurm] ERROR: $*" >&2
  exit "$code"
}

# alive PID: the process exists and is not a zombie
alive() {
  [[ -r /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# pid_of PIDFILE NAME: print the pid recorded in PIDFILE when that process is alive and its
# name (/proc/PID/comm) is NAME; fail otherwise (missing file, stale pid, pid reused by another)
pid_of() {
  local file=$1 name=$2 pid comm
  [[ -r $file ]] || return 1
  pid=$(tr -dc '0-9' <"$file")
  [[ -n $pid ]] && alive "$pid" || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [[ $comm == "$name" ]] || return 1
  echo "$pid"
}

# stop_daemon PIDFILE NAME [TIMEOUT_S]: SIGTERM the process of PIDFILE, wait for it to exit
# (SIGKILL after TIMEOUT_S), then remove PIDFILE (some daemons leave a stale one behind)
stop_daemon() {
  local file=$1 name=$2 timeout=${3:-30} pid i
  if pid=$(pid_of "$file" "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      say "$name (pid $pid) still running after ${timeout}s: sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
    say "stopped $name (pid $pid)"
  else
    say "$name is not running"
  fi
  if [[ -e $file ]]; then
    rm -f "$file"
    say "removed $file"
  fi
}
