#!/bin/sh
#
# build.sh [outdir]: build the execution harness of pci_user.c with the
# host's C compiler, AddressSanitizer and UndefinedBehaviorSanitizer on.
# sys/dev/pci/pci_user.c is compiled unchanged, against the stand-ins
# in include/ (all of them kstub.h); prints the path of the binary.
#
# Environment: CC (default clang, else cc), SANITIZE (default
# "address,undefined"; empty for none).
#
set -eu

here=$(cd "$(dirname "$0")" && pwd)
netbsd=$(dirname "$here")
out=${1:-$here/obj}
mkdir -p "$out"

if [ -z "${CC:-}" ]; then
	if command -v clang >/dev/null 2>&1; then CC=clang; else CC=cc; fi
fi
SANITIZE=${SANITIZE-address,undefined}
san=
if [ -n "$SANITIZE" ]; then
	san="-fsanitize=$SANITIZE -fno-sanitize-recover=all -fno-omit-frame-pointer"
fi
cflags="-g -O1 -std=gnu11 -Wall -Werror -Wno-unused-parameter -pthread $san"

# shellcheck disable=SC2086
"$CC" $cflags -D_KERNEL -I"$here/include" -I"$netbsd/sys" \
    -c "$netbsd/sys/dev/pci/pci_user.c" -o "$out/pci_user.o"
# shellcheck disable=SC2086
"$CC" $cflags -c "$here/kstub.c" -o "$out/kstub.o"
# shellcheck disable=SC2086
"$CC" $cflags -idirafter "$here/include" -I"$netbsd/sys" \
    -c "$here/cases.c" -o "$out/cases.o"
# shellcheck disable=SC2086
"$CC" $cflags "$out/pci_user.o" "$out/kstub.o" "$out/cases.o" \
    -o "$out/harness"
echo "$out/harness"
