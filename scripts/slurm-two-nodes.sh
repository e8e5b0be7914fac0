#!/usr/bin/env bash
# A private two-node Slurm cluster on this one host, for tests of cells that span nodes: one slurmctld
# and two slurmd (nodes named after two host names of this machine in /etc/hosts, e.g. `node1` and
# `node2`), one CPU each, no accounting, its own ports (36817-36822) and state under $STATE_DIR. The
# packaged Slurm (22.05, built without --enable-multiple-slurmd) refuses two nodes with one
# NodeHostname, so each node gets its own name; both resolve to this host. Needs munged running
# (scripts/slurm-local.sh start starts it) and root. Leaves the cluster of slurm-local.sh alone.
#
# Usage: scripts/slurm-two-nodes.sh start|stop|status   (then: export SLURM_CONF=$STATE_DIR/slurm.conf)
set -euo pipefail

STATE_DIR=${ABLATION_TWO_NODES_DIR:-/tmp/ablation-two-nodes}
CONF=$STATE_DIR/slurm.conf
CONF_RE=${CONF//./\\.} # the config path as a pattern of pgrep and pkill
export SLURM_CONF=$CONF

say() { echo "slurm-two-nodes: $*"; }
die() { echo "slurm-two-nodes: error: $*" >&2; exit 1; }

node_names() {  # two names /etc/hosts gives a loopback address (Slurm takes `localhost` for this host's own name)
    awk '$1 ~ /^127\./ { for (i = 2; i <= NF; i++) print $i }' /etc/hosts | grep -v '^localhost' |
        awk '!seen[$0]++' | head -n 2
}

running() { pgrep -f -- "^$1 -f $CONF_RE\$" >/dev/null; }  # a daemon of this cluster: slurmctld, or slurmd -N name

ready() { sinfo -h -N -o "%N %t" 2>/dev/null | awk '$2 == "idle" || $2 == "mix" || $2 == "alloc"' | wc -l; }

write_conf() {
    local first=$1 second=$2
    mkdir -p "$STATE_DIR/state" "$STATE_DIR/spool/$first" "$STATE_DIR/spool/$second"
    cat > "$CONF" <<EOF
ClusterName=twonodes
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
SlurmctldPort=36817
SlurmdPort=36818
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool/%n
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/%n.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/%n.log
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=2,batch_sched_delay=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=2
NodeName=$first NodeHostname=$first NodeAddr=127.0.0.1 Port=36821 CPUs=1 RealMemory=2000
NodeName=$second NodeHostname=$second NodeAddr=127.0.0.1 Port=36822 CPUs=1 RealMemory=2000
PartitionName=two Nodes=$first,$second Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    if [[ $(ready) == 2 ]]; then say "ready: 2 nodes accept jobs (export SLURM_CONF=$CONF)"; return; fi
    pgrep -x munged >/dev/null || die "munged is not running (start it with: scripts/slurm-local.sh start)"
    mapfile -t names < <(node_names)
    ((${#names[@]} == 2)) || die "/etc/hosts gives this host fewer than two names (add e.g. '127.0.0.1 node1 node2')"
    write_conf "${names[0]}" "${names[1]}"
    running slurmctld || slurmctld -f "$CONF"
    for name in "${names[@]}"; do
        running "slurmd -N $name" || slurmd -N "$name" -f "$CONF"
    done
    for _ in $(seq 60); do
        if [[ $(ready) == 2 ]]; then say "ready: 2 nodes accept jobs (export SLURM_CONF=$CONF)"; return; fi
        sleep 0.5
    done
    die "the nodes are not ready after 30 s; see $STATE_DIR/*.log"
}

# Jobs first, daemons after: a step still completing when slurmctld goes cannot report its end, and its
# slurmstepd lives on; the daemons by their command line (this cluster's config), not by pid files,
# which a slurmd started with -N does not always leave behind. Anything of its jobs still there at the
# end (a step that could not end) is killed by job id.
stop() {
    local jobs=""
    if [[ -f $CONF ]] && running slurmctld; then
        jobs=$(timeout 5 squeue -h -p two -o %i 2>/dev/null | paste -sd '|' || true)
        scancel --partition=two 2>/dev/null || true
        local queue
        for _ in $(seq 40); do
            queue=$(timeout 5 squeue -h -p two 2>/dev/null) || break # no answer: stop waiting
            [[ -n $queue ]] || break
            sleep 0.5
        done
    fi
    local daemons="^(slurmctld|slurmd -N [^ ]+) -f $CONF_RE\$"
    pkill -f -- "$daemons" || true
    for _ in $(seq 20); do
        pgrep -f -- "$daemons" >/dev/null || break
        sleep 0.5
    done
    pkill -KILL -f -- "$daemons" || true # a slurmd still waiting on a step that cannot end
    [[ -z $jobs ]] || pkill -KILL -f -- "^slurmstepd: \[($jobs)\." || true
    say "stopped"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) n=$(ready); say "$n of 2 nodes accept jobs"; [[ $n == 2 ]] ;;
    *) die "usage: $0 start|stop|status" ;;
esac
