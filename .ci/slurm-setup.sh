#!/usr/bin/env bash
# Install what the real single-node Slurm test needs (Debian packages): slurm-wlm (slurmctld, slurmd,
# client commands), munge, slurmdbd and mariadb-server (accounting: submitit polls sacct, and without
# it a hard-killed job is waited for forever). Idempotent: does nothing when every binary is present;
# runs `apt-get update` only when a package has no install candidate. Never starts a daemon: the test
# fixture (tests/slurm_cluster.py) starts and stops them by PID.
set -euo pipefail

need=()
command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
  && command -v sbatch >/dev/null 2>&1 && command -v sacct >/dev/null 2>&1 || need+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || need+=(munge)
command -v slurmdbd >/dev/null 2>&1 || need+=(slurmdbd)
{ command -v mariadbd >/dev/null 2>&1 || command -v mysqld >/dev/null 2>&1 \
  || [ -x /usr/sbin/mariadbd ] || [ -x /usr/sbin/mysqld ]; } || need+=(mariadb-server)
if [ ${#need[@]} -eq 0 ]; then
  echo "slurm-setup: slurm-wlm, munge, slurmdbd, mariadb-server already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "slurm-setup: need root or sudo to install ${need[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
command -v apt-get >/dev/null 2>&1 || { echo "slurm-setup: no apt-get (not Debian/Ubuntu); install ${need[*]} by hand" >&2; exit 1; }

# Refresh the package lists only when one of the packages has no candidate.
for p in "${need[@]}"; do
  cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
  if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
    echo "slurm-setup: apt-get update (no candidate for $p)"
    $SUDO apt-get update -qq
    break
  fi
done

# Keep apt's maintainer scripts from starting munge/mariadb/slurm services: add a deny-all
# policy-rc.d for the install when the system has none, and remove it afterwards.
added_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  added_policy=1
fi
cleanup() { if [ -n "$added_policy" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

echo "slurm-setup: installing ${need[*]}"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "slurm-setup: done ($(slurmctld -V 2>/dev/null || echo 'slurmctld ?'))"
