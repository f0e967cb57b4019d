#!/usr/bin/env bash
# Installs what the build and the tests need from Debian's packages, only
# when it is missing: a C toolchain, Python's venv, clang with libFuzzer
# and the sanitizer runtimes, and Open MPI. Runs as root (CI) or via sudo.
set -eu
need=()
command -v cc >/dev/null || need+=(build-essential)
command -v make >/dev/null || need+=(make)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
for extra in scripts/deps-*.txt; do
    [ -e "$extra" ] || continue
    # Each line: "command-or-path package"; the package is installed when
    # the command is not on PATH and the path does not exist.
    while read -r probe pkg; do
        [ -z "${probe:-}" ] || [ "${probe#\#}" != "$probe" ] && continue
        if ! command -v "$probe" >/dev/null 2>&1 && [ ! -e "$probe" ]; then need+=("$pkg"); fi
    done <"$extra"
done
# Parts with their own installers (e.g. Open MPI for the multi-rank tests).
for sub in scripts/ep-deps.sh; do
    [ -x "$sub" ] && "$sub"
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing: ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
