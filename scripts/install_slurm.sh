#!/usr/bin/env bash
# Installs a single-machine SLURM (Debian's slurm-wlm) and munge for the launcher tests, if
# missing. Needs root and apt-get; configuring and starting the daemons is the tests' job
# (tests/launchers/slurm_cluster.py), so this only installs packages.
set -euo pipefail
if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install_slurm.sh: installing slurm-wlm and munge needs root and apt-get" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
echo "install_slurm.sh: installed $(dpkg-query -W -f '${Package} ${Version}  ' slurm-wlm munge)"
