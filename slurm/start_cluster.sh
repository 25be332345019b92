#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster on this machine (Debian/Ubuntu, as root, no systemd):
# munged, mariadbd, slurmdbd (accounting), slurmctld and slurmd, with partition `debug`.
#
#   sudo slurm/start_cluster.sh      # ~15 s when the packages are installed, ~1-2 min otherwise
#   sudo slurm/stop_cluster.sh       # stops everything again (by pid files)
#
# Idempotent: what is already installed, written or running is left as it is, so a second run
# while the cluster is up is a no-op, and a run after stop_cluster.sh starts it again.
# Exit codes: 0 up (node idle), 1 a step failed, 2 not root, 3 packages missing and no apt-get,
# 4 a SLURM/munge config not written by this script is in the way (it is never overwritten).
#
# Environment: SLURM_START_TIMEOUT (seconds to wait for each daemon and the idle node, default 90).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/cluster_lib.sh
source "$HERE/cluster_lib.sh"

TIMEOUT=${SLURM_START_TIMEOUT:-90}
CLUSTER=local
PARTITION=debug
DB_NAME=slurm_acct_db
DB_USER=slurm
PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)
STARTED=()

[[ $EUID -eq 0 ]] || fail 2 "run as root: it installs packages and starts system daemons"

# wait_for DESCRIPTION COMMAND...: retry COMMAND every 0.5 s until it succeeds or TIMEOUT passes
wait_for() {
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# show_log FILE...: the last lines of log files, for error messages
show_log() {
  local f
  for f in "$@"; do
    [[ -r $f ]] && {
      echo "----- last lines of $f" >&2
      tail -n 25 "$f" >&2
    }
  done
  return 0
}

# ---------------------------------------------------------------- 1. packages
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  command -v apt-get >/dev/null 2>&1 ||
    fail 3 "packages missing (${missing[*]}) and apt-get is not available"
  say "installing ${missing[*]} (apt-get, --no-install-recommends)"
  # keep the packages' maintainer scripts from starting daemons themselves (we start them below,
  # with our own pid files); a policy-rc.d that is already there is left alone
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# temporary, from optprobe slurm/start_cluster.sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
  if ((own_policy)); then
    rm -f "$policy"
    trap - EXIT
  fi
  say "installed ${missing[*]}"
else
  say "packages already installed: ${PACKAGES[*]}"
fi
for user in munge mysql slurm; do
  id "$user" >/dev/null 2>&1 || fail 1 "user '$user' does not exist after installing the packages"
done

# ---------------------------------------------------------------- 2. munge
install -d -m 0700 -o munge -g munge /etc/munge /var/lib/munge /var/log/munge
install -d -m 0755 -o munge -g munge /run/munge
if [[ ! -s $MUNGE_KEY ]]; then
  if command -v mungekey >/dev/null 2>&1; then
    mungekey --create --keyfile="$MUNGE_KEY" --force
  else
    dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
  fi
  say "wrote a new munge key $MUNGE_KEY"
fi
chown munge:munge "$MUNGE_KEY"
chmod 0400 "$MUNGE_KEY"
if pid=$(pid_of "$MUNGED_PID" munged); then
  say "munged already running (pid $pid)"
else
  rm -f "$MUNGED_PID"
  runuser -u munge -- /usr/sbin/munged </dev/null >>/var/log/munge/munged.out 2>&1 ||
    {
      show_log /var/log/munge/munged.log /var/log/munge/munged.out
      fail 1 "munged did not start"
    }
  wait_for munged pid_of "$MUNGED_PID" munged || fail 1 "munged wrote no pid file $MUNGED_PID"
  STARTED+=(munged)
  say "started munged (pid $(pid_of "$MUNGED_PID" munged))"
fi
munge_ok() { munge -n | unmunge; }
wait_for "munge credential" munge_ok || fail 1 "munge -n | unmunge fails: munged is not working"

# ---------------------------------------------------------------- 3. mariadb (accounting store)
install -d -m 0755 -o mysql -g mysql /run/mysqld /var/log/mysql
MARIADB_LOG=/var/log/mysql/mariadbd.log
if [[ ! -d /var/lib/mysql/mysql ]]; then
  say "initialising the MariaDB data directory /var/lib/mysql"
  mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$MARIADB_LOG" 2>&1 ||
    {
      show_log "$MARIADB_LOG"
      fail 1 "mariadb-install-db failed"
    }
fi
if pid=$(pid_of "$MARIADB_PID" mariadbd); then
  say "mariadbd already running (pid $pid)"
else
  rm -f "$MARIADB_PID"
  # mariadbd has no daemon mode: run it in its own session, detached from this shell
  setsid mariadbd --user=mysql --pid-file="$MARIADB_PID" --socket="$MARIADB_SOCK" \
    </dev/null >>"$MARIADB_LOG" 2>&1 &
  mariadb_up() { pid_of "$MARIADB_PID" mariadbd && mariadb-admin --socket="$MARIADB_SOCK" ping; }
  wait_for mariadbd mariadb_up || {
    show_log "$MARIADB_LOG"
    fail 1 "mariadbd did not come up within ${TIMEOUT}s"
  }
  STARTED+=(mariadbd)
  say "started mariadbd (pid $(pid_of "$MARIADB_PID" mariadbd))"
fi

# the accounting password: kept from our own slurmdbd.conf, otherwise a new random one
db_pass=""
if [[ -f $SLURMDBD_CONF ]] && grep -qF "$MARKER" "$SLURMDBD_CONF"; then
  db_pass=$(sed -n 's/^StoragePass=//p' "$SLURMDBD_CONF" | head -n 1)
fi
if [[ -z $db_pass ]]; then
  db_pass=$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)
fi
mariadb --socket="$MARIADB_SOCK" -u root <<SQL
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$db_pass';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$db_pass';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
say "accounting database '$DB_NAME' and user '$DB_USER' ready"

# ---------------------------------------------------------------- 4. configs
HOST=$(hostname -s)
node_line=$(slurmd -C 2>/dev/null | grep '^NodeName=' | head -n 1) ||
  fail 1 "slurmd -C printed no NodeName line"
ctld_host=$HOST
if ! getent hosts "$HOST" >/dev/null; then
  # the short hostname does not resolve: give SLURM the loopback address explicitly
  ctld_host="$HOST(127.0.0.1)"
  node_line="$node_line NodeAddr=127.0.0.1"
fi

# write_config PATH MODE OWNER < CONTENT: install CONTENT at PATH when it differs; returns 0 when
# the file changed, 1 when it was already identical; refuses (exit 4) to replace a foreign file
write_config() {
  local path=$1 mode=$2 owner=$3 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
    chmod "$mode" "$path"
    chown "$owner" "$path"
    return 1
  fi
  if [[ -f $path ]] && ! grep -qF "$MARKER" "$path"; then
    rm -f "$tmp"
    fail 4 "$path exists and was not written by this script; it is left alone (move it away to let this script manage a local cluster)"
  fi
  install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$tmp" "$path"
  rm -f "$tmp"
  say "wrote $path"
  return 0
}

install -d -m 0755 "$SLURM_ETC"
install -d -m 0755 -o slurm -g slurm "$SLURM_LOG_DIR" "$SLURM_STATE_DIR" \
  "$SLURM_STATE_DIR/slurmctld"
install -d -m 0755 "$SLURM_STATE_DIR/slurmd"

slurm_conf_changed=0
write_config "$SLURM_CONF" 0644 root:root <<EOF && slurm_conf_changed=1
$MARKER
# Regenerated when it differs; edit slurm/start_cluster.sh instead.
ClusterName=$CLUSTER
SlurmctldHost=$ctld_host
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# cores are the consumable resource; memory is not (do not ask for --mem)
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
StateSaveLocation=$SLURM_STATE_DIR/slurmctld
SlurmdSpoolDir=$SLURM_STATE_DIR/slurmd
SlurmctldLogFile=$SLURM_LOG_DIR/slurmctld.log
SlurmdLogFile=$SLURM_LOG_DIR/slurmd.log
$node_line State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

slurmdbd_conf_changed=0
write_config "$SLURMDBD_CONF" 0600 slurm:slurm <<EOF && slurmdbd_conf_changed=1
$MARKER
# Regenerated when it differs; edit slurm/start_cluster.sh instead.
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
PidFile=$SLURMDBD_PID
LogFile=$SLURM_LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$db_pass
StorageLoc=$DB_NAME
EOF

# a daemon that runs with an older config is restarted
if ((slurmdbd_conf_changed)) && pid_of "$SLURMDBD_PID" slurmdbd >/dev/null; then
  say "slurmdbd.conf changed: restarting slurmdbd"
  stop_daemon "$SLURMDBD_PID" slurmdbd
fi
if ((slurm_conf_changed)); then
  for d in slurmd slurmctld; do
    pidfile=$SLURMD_PID
    [[ $d == slurmctld ]] && pidfile=$SLURMCTLD_PID
    if pid_of "$pidfile" "$d" >/dev/null; then
      say "slurm.conf changed: restarting $d"
      stop_daemon "$pidfile" "$d"
    fi
  done
fi

# start_slurm_daemon NAME PIDFILE: start a SLURM daemon (it daemonizes and writes PIDFILE)
start_slurm_daemon() {
  local name=$1 pidfile=$2 pid
  if pid=$(pid_of "$pidfile" "$name"); then
    say "$name already running (pid $pid)"
    return 0
  fi
  rm -f "$pidfile"
  "$name" </dev/null >>"$SLURM_LOG_DIR/$name.out" 2>&1 || {
    show_log "$SLURM_LOG_DIR/$name.log" "$SLURM_LOG_DIR/$name.out"
    fail 1 "$name did not start"
  }
  wait_for "$name" pid_of "$pidfile" "$name" || {
    show_log "$SLURM_LOG_DIR/$name.log" "$SLURM_LOG_DIR/$name.out"
    fail 1 "$name wrote no pid file $pidfile within ${TIMEOUT}s"
  }
  STARTED+=("$name")
  say "started $name (pid $(pid_of "$pidfile" "$name"))"
}

# ---------------------------------------------------------------- 5. slurmdbd + cluster record
start_slurm_daemon slurmdbd "$SLURMDBD_PID"
wait_for slurmdbd sacctmgr -n -P show cluster format=cluster || {
  show_log "$SLURM_LOG_DIR/slurmdbd.log"
  fail 1 "slurmdbd does not answer (sacctmgr show cluster) within ${TIMEOUT}s"
}
if sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
  say "cluster '$CLUSTER' already registered in accounting"
else
  sacctmgr -i add cluster "$CLUSTER" >/dev/null
  say "registered cluster '$CLUSTER' in accounting (sacctmgr add cluster)"
fi

# ---------------------------------------------------------------- 6. slurmctld + slurmd
start_slurm_daemon slurmctld "$SLURMCTLD_PID"
ctld_up() { scontrol ping | grep -q 'is UP'; }
wait_for slurmctld ctld_up || {
  show_log "$SLURM_LOG_DIR/slurmctld.log"
  fail 1 "slurmctld does not answer (scontrol ping) within ${TIMEOUT}s"
}
start_slurm_daemon slurmd "$SLURMD_PID"

# ---------------------------------------------------------------- 7. wait for an idle node
node_state() { sinfo -h -N -n "$HOST" -o '%t' 2>/dev/null | head -n 1; }
deadline=$((SECONDS + TIMEOUT))
resumed=0
state=$(node_state)
until [[ $state == idle || $state == mix || $state == alloc ]]; do
  if ((SECONDS >= deadline)); then
    sinfo -N -l >&2 || true
    show_log "$SLURM_LOG_DIR/slurmctld.log" "$SLURM_LOG_DIR/slurmd.log"
    fail 1 "node $HOST is '$state', not idle, after ${TIMEOUT}s"
  fi
  # a node left down/drained by an earlier unclean stop: put it back once
  if ((!resumed)) && [[ $state == down* || $state == drain* || $state == drng* ]]; then
    scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
    resumed=1
  fi
  sleep 0.5
  state=$(node_state)
done

if ((${#STARTED[@]})); then
  say "started: ${STARTED[*]}"
else
  say "nothing to start: the cluster was already up"
fi
say "cluster '$CLUSTER' is up: node $HOST is $state in partition '$PARTITION'"
sinfo
