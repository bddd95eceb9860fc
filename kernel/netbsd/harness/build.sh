#!/bin/sh
#
# build.sh [outdir]: build the execution harness of pci_user.c with the
# host's C compiler, AddressSanitizer and UndefinedBehaviorSanitizer on.
# sys/dev/pci/pci_user.c is compiled unchanged, against the stand-ins
# in include/ (all of them kstub.h); prints the path of the binary.
#
# build.sh fuzz [outdir]: the libFuzzer target fuzz.c instead (clang,
# -fsanitize=fuzzer,address,undefined): prints the path of "fuzz".
# build.sh cov [outdir]: the same target with -fprofile-instr-generate
# -fcoverage-mapping and no ASan, to replay a corpus for line coverage:
# prints the path of "fuzz-cov".
#
# Environment: CC (default clang, else cc), SANITIZE (default
# "address,undefined"; empty for none).
#
set -eu

here=$(cd "$(dirname "$0")" && pwd)
netbsd=$(dirname "$here")
mode=harness
case "${1:-}" in
fuzz|cov)	mode=$1; shift ;;
esac
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
case $mode in
fuzz)	CC=${FUZZ_CC:-clang}
	san="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
	main=fuzz bin=fuzz ;;
cov)	CC=${FUZZ_CC:-clang}
	san="-fsanitize=fuzzer -fprofile-instr-generate -fcoverage-mapping"
	main=fuzz bin=fuzz-cov ;;
*)	main=cases bin=harness ;;
esac
cflags="-g -O1 -std=gnu11 -Wall -Werror -Wno-unused-parameter -pthread $san"

# shellcheck disable=SC2086
"$CC" $cflags -D_KERNEL -I"$here/include" -I"$netbsd/sys" \
    -c "$netbsd/sys/dev/pci/pci_user.c" -o "$out/pci_user.o"
# shellcheck disable=SC2086
"$CC" $cflags -c "$here/kstub.c" -o "$out/kstub.o"
# shellcheck disable=SC2086
"$CC" $cflags -idirafter "$here/include" -I"$netbsd/sys" \
    -c "$here/$main.c" -o "$out/$main.o"
# shellcheck disable=SC2086
"$CC" $cflags "$out/pci_user.o" "$out/kstub.o" "$out/$main.o" \
    -o "$out/$bin"
echo "$out/$bin"
