#!/usr/bin/env bash
# Installs Open MPI (compiler wrapper, headers, mpirun) from Debian's packages
# when mpicc or mpirun is missing: the multi-rank tests (scripts/ep-test.sh)
# and the MPI prepare/finalize need them. Runs as root (CI) or via sudo.
set -eu
if command -v mpicc >/dev/null 2>&1 && command -v mpirun >/dev/null 2>&1; then exit 0; fi
echo "installing Open MPI: libopenmpi-dev openmpi-bin"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libopenmpi-dev openmpi-bin
command -v mpicc >/dev/null && command -v mpirun >/dev/null
