#!/usr/bin/env bash
# Installs libmoe into a staging prefix and builds examples/hello-moe.c
# against it with pkg-config, statically and dynamically, then runs both:
# the header, the libraries and moe.pc are what an embedder gets.
set -eu
cd "$(dirname "$0")/.."
stage=$PWD/build/stage
rm -rf "$stage"
make -s install PREFIX="$stage" >/dev/null
export PKG_CONFIG_PATH="$stage/lib/pkgconfig"
pass=0 fail=0
check() {
    if "$@"; then pass=$((pass + 1)); echo "ok   $*"; else fail=$((fail + 1)); echo "FAIL $*"; fi
}
check cc -std=c11 -Wall -Wextra -Werror examples/hello-moe.c $(pkg-config --cflags moe) \
    -o build/hello-moe-shared $(pkg-config --libs moe)
check env LD_LIBRARY_PATH="$stage/lib" build/hello-moe-shared
check cc -std=c11 -Wall -Wextra -Werror examples/hello-moe.c $(pkg-config --cflags moe) \
    -o build/hello-moe-static "$stage/lib/libmoe.a" $(pkg-config --static --libs moe | sed 's/-lmoe//')
check build/hello-moe-static
check test -x "$stage/bin/moe"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
