#!/usr/bin/env bash
# Local single-node Slurm cluster (munge + MariaDB + slurmdbd + slurmctld + slurmd) so that
# tests and `ablate grid` submit real jobs. Runs as root, without systemd (containers, CI).
#
# Usage: scripts/slurm-local.sh start|stop|status
#   start   install missing Debian packages, write the config, start every daemon, wait until the
#           node accepts jobs; a second start only reports that the cluster is ready.
#   stop    cancel all jobs and stop the daemons this script started.
#   status  print the state of each part; exit 0 iff the cluster accepts jobs.
# Environment: ABLATION_SLURM_CONF_DIR, ABLATION_SLURM_STATE_DIR, ABLATION_SLURM_LOG_DIR,
#   ABLATION_SLURM_DB_PORT override the default paths and the private MariaDB's TCP port.
set -euo pipefail
shopt -s inherit_errexit

CONF_DIR=${ABLATION_SLURM_CONF_DIR:-/etc/slurm-ablation}
STATE_DIR=${ABLATION_SLURM_STATE_DIR:-/var/lib/ablation-slurm}
LOG_DIR=${ABLATION_SLURM_LOG_DIR:-/var/log/ablation-slurm}
DB_PORT=${ABLATION_SLURM_DB_PORT:-3316}
RUN_DIR=$STATE_DIR/run
DB_DIR=$STATE_DIR/mysql
DB_RUN=$RUN_DIR/mysqld
DB_SOCK=$DB_RUN/mysqld.sock
CLUSTER=ablation
PARTITION=debug
NODE=$(hostname -s)
export SLURM_CONF=$CONF_DIR/slurm.conf
DEFAULT_CONF=/etc/slurm/slurm.conf

PACKAGES=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)
BINARIES=(munged mariadbd slurmdbd slurmctld slurmd sbatch)

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }

# Poll a command until it succeeds; stop early when the daemon (pid file, process name) has
# died, and show the log that explains why.
wait_for() {
    local what=$1 timeout=$2 logfile=$3 pidfile=$4 name=$5; shift 5
    local start=$SECONDS deadline=$((SECONDS + timeout)) why
    until "$@" >/dev/null 2>&1; do
        why=""
        ((SECONDS >= deadline)) && why="not ready after ${timeout}s"
        ((SECONDS > start + 2)) && ! pid_alive "$pidfile" "$name" && why="$name is not running"
        if [[ -n $why ]]; then
            echo "slurm-local: error: $what: $why; last lines of $logfile:" >&2
            tail -n 25 "$logfile" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.5
    done
}

# A pid file may outlive its daemon (killed session, reused pid, zombie): trust it only when
# the process is alive and has the expected name.
pid_alive() {
    local pid
    pid=$(cat "$1" 2>/dev/null) && proc_alive "$pid" "$2"
}

proc_alive() {
    local stat
    [[ $1 =~ ^[0-9]+$ ]] && stat=$(cat "/proc/$1/stat" 2>/dev/null) && [[ $stat == "$1 ($2) "[^Z]* ]]
}

# Run a daemon that forks into the background; if it cannot even start, show why.
launch() {
    local logfile=$1; shift
    "$@" </dev/null >>"$logfile" 2>&1 9>&- && return 0  # 9: the lock, not for daemons
    echo "slurm-local: error: '$*' failed; last lines of $logfile:" >&2
    tail -n 25 "$logfile" >&2 || true
    exit 1
}

# ---------------------------------------------------------------- packages

ensure_packages() {
    local missing=0 b
    for b in "${BINARIES[@]}"; do command -v "$b" >/dev/null || missing=1; done
    ((missing)) || return 0
    local t0=$SECONDS
    say "installing ${PACKAGES[*]}"
    # Debian starts services from postinst scripts; without systemd that fails or starts the
    # stock daemons, so block it for the duration of the install (unless a policy already exists).
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    local rc=0
    if ! apt-cache show slurmctld >/dev/null 2>&1; then apt-get update -qq || rc=$?; fi
    if ((rc == 0)); then
        apt_install || { apt-get update -qq && apt_install; } || rc=$?
    fi
    ((own_policy)) && rm -f "$policy"
    ((rc == 0)) || die "apt-get install ${PACKAGES[*]} failed"
    say "packages installed in $((SECONDS - t0))s"
}

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${PACKAGES[@]}" >"$LOG_DIR/apt.log" 2>&1
}

# ---------------------------------------------------------------- config

# Write a file only when its content changes; report whether it did (exit 0 = changed).
install_file() {
    local dest=$1 mode=$2 tmp
    tmp=$(mktemp "$dest.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then rm -f "$tmp"; return 1; fi
    mv -f "$tmp" "$dest"
}

node_line() {
    # slurmd -C reports the topology slurmd will register with; keep it so the node is not
    # drained for a mismatch, and leave memory headroom for the OS and the daemons.
    local hw mem margin
    hw=$(slurmd -C | head -n 1)
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    margin=$((mem / 20 > 512 ? mem / 20 : 512))
    hw=$(sed -e "s/^NodeName=[^ ]*/NodeName=$NODE/" -e "s/RealMemory=[0-9]*/RealMemory=$((mem - margin))/" <<<"$hw")
    echo "$hw NodeAddr=127.0.0.1 NodeHostname=$NODE State=UNKNOWN"
}

slurm_conf() {
    cat <<EOF
# Generated by scripts/slurm-local.sh; rewritten on every start.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may not start again before the step credential lifetime has passed
# (default 120 s); tests requeue jobs and wait for them.
AuthInfo=cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2,batch_sched_delay=0
PriorityType=priority/basic
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobCompType=jobcomp/none
ReturnToService=2
# Well above every id in the accounting database: a controller killed before saving its state
# would hand out the ids of its last jobs again, and submitit names its files by job id.
FirstJobId=$FIRST_JOB_ID
JobRequeue=1
MinJobAge=30
KillWait=2
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=10
Waittime=0
$NODE_LINE
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

slurmdbd_conf() {
    cat <<EOF
# Generated by scripts/slurm-local.sh; rewritten on every start.
AuthType=auth/munge
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(db_password)
StorageLoc=slurm_acct_db
EOF
}

db_password() {
    local f=$STATE_DIR/db.password
    if [[ ! -s $f ]]; then
        (umask 077; od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$f")
    fi
    cat "$f"
}

first_job_id() {
    if pid_alive "$RUN_DIR/slurmctld.pid" slurmctld; then  # keep what the running controller read
        sed -n 's/^FirstJobId=//p' "$CONF_DIR/slurm.conf"
        return
    fi
    # The last jobs before a kill may be missing from the database too: leave a gap.
    db -N -B -e "SELECT COALESCE(MAX(id_job) + 1000, 0) + 1 FROM slurm_acct_db.${CLUSTER}_job_table" \
        2>/dev/null || echo 1
}

# Returns 0 when slurm.conf or slurmdbd.conf changed.
write_configs() {
    mkdir -p "$CONF_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" "$RUN_DIR"
    NODE_LINE=$(node_line)
    [[ $NODE_LINE == *RealMemory=* ]] || die "slurmd -C gave no node description"
    FIRST_JOB_ID=$(first_job_id)
    local changed=1 conf dbd_conf
    conf=$(slurm_conf)
    dbd_conf=$(slurmdbd_conf)
    install_file "$CONF_DIR/slurm.conf" 644 <<<"$conf" && changed=0
    install_file "$CONF_DIR/slurmdbd.conf" 600 <<<"$dbd_conf" && changed=0
    chown root:root "$CONF_DIR/slurmdbd.conf"  # slurmdbd insists on SlurmUser ownership, mode 600
    link_default_conf
    return $changed
}

# submitit and other callers run sbatch/sacct/... by name, often without SLURM_CONF: point the
# compiled-in default path at our config unless a real cluster's config already lives there.
link_default_conf() {
    if [[ -e $DEFAULT_CONF && ! -L $DEFAULT_CONF ]]; then
        say "warning: $DEFAULT_CONF belongs to another cluster; callers need SLURM_CONF=$SLURM_CONF"
        return
    fi
    mkdir -p "$(dirname "$DEFAULT_CONF")"
    ln -sfn "$SLURM_CONF" "$DEFAULT_CONF"
}

# ---------------------------------------------------------------- daemons

munge_ok() { munge -n </dev/null | unmunge >/dev/null; }

start_munge() {
    munge_ok 2>/dev/null && return 0
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create >/dev/null
    mkdir -p /run/munge /var/lib/munge
    chown munge:munge /run/munge /var/lib/munge
    touch "$LOG_DIR/munged.log" && chown munge:munge "$LOG_DIR/munged.log" && chmod 640 "$LOG_DIR/munged.log"
    mkdir -p "$RUN_DIR/munge" && chown munge:munge "$RUN_DIR/munge"
    launch "$LOG_DIR/munged.log" runuser -u munge -- \
        munged --log-file="$LOG_DIR/munged.log" --pid-file="$RUN_DIR/munge/munged.pid"
    wait_for munged 15 "$LOG_DIR/munged.log" "$RUN_DIR/munge/munged.pid" munged munge_ok
}

db() { mariadb --no-defaults --socket="$DB_SOCK" -uroot "$@"; }
db_ok() { mysqladmin --no-defaults --socket="$DB_SOCK" -uroot ping; }

start_mariadb() {
    mkdir -p "$DB_RUN" && chown mysql:mysql "$DB_RUN"
    touch "$LOG_DIR/mariadb.log" && chown mysql:mysql "$LOG_DIR/mariadb.log"
    if ! db_ok >/dev/null 2>&1; then
        if [[ ! -d $DB_DIR/mysql ]]; then
            mkdir -p "$DB_DIR" && chown mysql:mysql "$DB_DIR"
            mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" --skip-test-db \
                --auth-root-authentication-method=socket >"$LOG_DIR/mariadb-install.log" 2>&1 \
                || die "mariadb-install-db failed; see $LOG_DIR/mariadb-install.log"
        fi
        setsid mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" --socket="$DB_SOCK" \
            --pid-file="$DB_RUN/mariadbd.pid" --port="$DB_PORT" --bind-address=127.0.0.1 \
            --skip-name-resolve --log-error="$LOG_DIR/mariadb.log" \
            --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
            </dev/null >>"$LOG_DIR/mariadb.log" 2>&1 9>&- &
        wait_for MariaDB 60 "$LOG_DIR/mariadb.log" "$DB_RUN/mariadbd.pid" mariadbd db_ok
    fi
    local pw; pw=$(db_password)
    db -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
           CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
           ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
           GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

# Probes check the pid file first: a client talking to a daemon that is not there waits ~60 s.
dbd_ok() { pid_alive "$RUN_DIR/slurmdbd.pid" slurmdbd && timeout 10 sacctmgr -n -P list cluster format=cluster; }

start_slurmdbd() {
    pid_alive "$RUN_DIR/slurmdbd.pid" slurmdbd || launch "$LOG_DIR/slurmdbd.log" slurmdbd
    wait_for slurmdbd 90 "$LOG_DIR/slurmdbd.log" "$RUN_DIR/slurmdbd.pid" slurmdbd dbd_ok
    if ! dbd_ok 2>/dev/null | grep -x "$CLUSTER" >/dev/null; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

ctld_ok() { pid_alive "$RUN_DIR/slurmctld.pid" slurmctld && timeout 5 scontrol ping 2>/dev/null | grep 'is UP' >/dev/null; }

start_slurmctld() {
    pid_alive "$RUN_DIR/slurmctld.pid" slurmctld && return 0
    launch "$LOG_DIR/slurmctld.log" slurmctld
    wait_for slurmctld 60 "$LOG_DIR/slurmctld.log" "$RUN_DIR/slurmctld.pid" slurmctld ctld_ok
    # Jobs recovered from the saved state belong to a run that died (a killed session or CI
    # job); with JobRequeue=1 they would start again and take the CPUs.
    local stale; stale=$(all_jobs)
    if [[ -n $stale ]]; then
        # shellcheck disable=SC2086
        scancel $stale 2>/dev/null || true
        say "cancelled jobs left from a previous run: $stale"
    fi
}

all_jobs() { timeout 10 squeue -h -o '%F' 2>/dev/null | sort -un | tr '\n' ' ' | sed 's/ $//'; }

node_state() { ctld_ok && timeout 5 sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n 1; }
node_ok() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

start_slurmd() {
    slurmd_ok || launch "$LOG_DIR/slurmd.log" slurmd -N "$NODE"
    # A node left down/drained by an unclean stop does not come back by itself.
    wait_for "slurmd registration" 30 "$LOG_DIR/slurmd.log" "$RUN_DIR/slurmd.pid" slurmd \
        bash -c "timeout 5 sinfo -h -N -n '$NODE' -o '%T' | grep -v '[*]\$' >/dev/null"
    node_ok || scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
    wait_for "node $NODE idle" 30 "$LOG_DIR/slurmd.log" "$RUN_DIR/slurmd.pid" slurmd node_ok
}

# The controller shows the node idle for SlurmdTimeout after slurmd died: check the process too.
slurmd_ok() { pid_alive "$RUN_DIR/slurmd.pid" slurmd; }

cluster_ready() {
    ctld_ok 2>/dev/null && dbd_ok >/dev/null 2>&1 && slurmd_ok && node_ok \
        && [[ $(timeout 5 sinfo -h -p "$PARTITION" -o '%a' 2>/dev/null) == up ]]
}

stop_pid() {
    local name=$1 pidfile=$2 i
    pid_alive "$pidfile" "$name" || { rm -f "$pidfile"; return 0; }
    local pid; pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do proc_alive "$pid" "$name" || break; sleep 0.25; done
    if proc_alive "$pid" "$name"; then kill -9 "$pid" 2>/dev/null || true; fi
    rm -f "$pidfile"
    say "stopped $name"
}

# ---------------------------------------------------------------- commands

cmd_start() {
    local t0=$SECONDS
    mkdir -p "$LOG_DIR" "$RUN_DIR"
    if command -v sinfo >/dev/null && cluster_ready; then
        say "cluster '$CLUSTER' already running and ready"
        print_env
        return 0
    fi
    ensure_packages
    start_munge
    start_mariadb
    if write_configs; then
        # Running daemons would keep the old node/partition definition.
        stop_pid slurmd "$RUN_DIR/slurmd.pid"
        stop_pid slurmctld "$RUN_DIR/slurmctld.pid"
        stop_pid slurmdbd "$RUN_DIR/slurmdbd.pid"
    fi
    start_slurmdbd
    start_slurmctld
    start_slurmd
    say "cluster '$CLUSTER' ready in $((SECONDS - t0))s (node $NODE, partition $PARTITION)"
    print_env
}

print_env() {
    say "logs: $LOG_DIR   config: $CONF_DIR   state: $STATE_DIR"
    say "use:  export SLURM_CONF=$SLURM_CONF"
}

cmd_stop() {
    if command -v squeue >/dev/null && ctld_ok 2>/dev/null; then
        local jobs i; jobs=$(all_jobs)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 40; i++)); do [[ -z $(all_jobs) ]] && break; sleep 0.25; done
        fi
    fi
    stop_pid slurmd "$RUN_DIR/slurmd.pid"
    stop_pid slurmctld "$RUN_DIR/slurmctld.pid"
    stop_pid slurmdbd "$RUN_DIR/slurmdbd.pid"
    stop_pid mariadbd "$DB_RUN/mariadbd.pid"
    stop_pid munged "$RUN_DIR/munge/munged.pid"  # only a munged this script started
    say "stopped (logs in $LOG_DIR)"
}

part() { printf 'slurm-local: %-10s %s\n' "$1" "$2"; }

probe() {
    local name=$1; shift
    if "$@" >/dev/null 2>&1; then part "$name" up; else part "$name" down; fi
}

cmd_status() {
    if ! command -v sinfo >/dev/null; then part slurm "not installed"; return 1; fi
    probe munge munge_ok
    probe mariadb db_ok
    probe slurmdbd dbd_ok
    probe slurmctld ctld_ok
    probe slurmd slurmd_ok
    part node "$NODE: $(node_state || echo unknown)"
    if cluster_ready; then
        say "ready: accepts jobs"
        print_env
    else
        say "not ready (logs in $LOG_DIR)"
        return 1
    fi
}

# One start/stop at a time (parallel test workers may all call start).
lock() {
    ((EUID == 0)) || die "run as root (it installs packages and starts system daemons)"
    mkdir -p "$RUN_DIR"
    exec 9>"$RUN_DIR/lock"
    flock -w 300 9 || die "another slurm-local.sh held $RUN_DIR/lock for 300 s"
}

case ${1:-} in
    start) lock; cmd_start ;;
    stop) lock; cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
