#!/bin/sh
#
# compile-check.sh <netbsd-src>
#
# Compile-check the pci(4) user driver files of this directory against a
# NetBSD source tree given by path (the directory that holds sys/, or
# sys/ itself).  Nothing is fetched or built from NetBSD here: the tree
# must already exist, and only our own files are compiled, to /dev/null.
#
# Checks:
#  1. sys/dev/pci/pci_user.c as an amd64 kernel file (clang,
#     --target=x86_64-unknown-netbsd, -Wall -Werror -Wshorten-64-to-32),
#     with stub opt_*.h headers and machine/x86 include links made in a
#     temp dir; and again as an i386 kernel file, where bus_size_t,
#     bus_addr_t and pointers are 32 bits wide and -Wshorten-64-to-32
#     catches every 64-bit user value that is not narrowed on purpose.
#     The hooks of apply.sh, applied to temp copies of pci.c and
#     pci_usrreq.c, which are then compiled the same way.
#  2. sys/dev/pci/pciuserio.h alone, kernel side and user side.
#  3. abi-probe.c against the tree's real <sys/ioccom.h>, compared with
#     the same probe built against abi-shim/ (what tests use), if a host
#     C compiler is available.
#
# Environment: CLANG (default clang), HOSTCC (default cc).
#
set -eu

here=$(cd "$(dirname "$0")" && pwd)
CLANG=${CLANG:-clang}
HOSTCC=${HOSTCC:-cc}

die() {
	echo "compile-check: $*" >&2
	exit 1
}

[ $# -eq 1 ] || die "usage: $0 <path-to-netbsd-src (containing sys/)>"
src=$1
[ -d "$src" ] || die "'$src' is not a directory"
src=$(cd "$src" && pwd)
if [ -f "$src/sys/sys/param.h" ]; then
	sys=$src/sys
elif [ -f "$src/sys/param.h" ] && [ -d "$src/kern" ]; then
	sys=$src
	src=$(dirname "$src")
else
	die "'$1' does not look like a NetBSD tree: no sys/sys/param.h"
fi
for f in sys/ioccom.h dev/pci/pcivar.h dev/pci/pci_usrreq.c \
    arch/amd64/include/param.h arch/i386/include/param.h \
    arch/x86/include/pci_machdep_common.h; do
	[ -f "$sys/$f" ] || die "'$sys' lacks $f (need sys/ with arch/amd64 and arch/x86)"
done
command -v "$CLANG" >/dev/null 2>&1 || die "no '$CLANG' in PATH"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pciuser-cc.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# machine/ and x86/ links, as config(1)'s build directory has them.
mkdir -p "$tmp/inc"
ln -s "$sys/arch/amd64/include" "$tmp/inc/machine"
ln -s "$sys/arch/x86/include" "$tmp/inc/x86"
ln -s "$sys/arch/amd64/include" "$tmp/inc/amd64"

# Empty option headers (config(1) would generate them from the kernel
# configuration): a fixed list plus every opt_*.h that the headers we
# may include ask for, so that the check follows the tree's version.
opts="opt_pci opt_param opt_syslimits opt_multiprocessor opt_lockdebug
    opt_diagnostic opt_ddb opt_uvmhist opt_modular opt_kernhist"
opts="$opts $(grep -rhoE '^#[[:space:]]*include[[:space:]]+"opt_[A-Za-z0-9_]+\.h"' \
    "$sys/sys" "$sys/uvm" "$sys/dev/pci" "$sys/arch/x86/include" \
    "$sys/arch/amd64/include" "$sys/arch/i386/include" "$sys/net" \
    "$sys/netinet" "$sys/kern" \
    "$here/sys" 2>/dev/null |
    sed -E 's/.*"(opt_[A-Za-z0-9_]+)\.h".*/\1/' | sort -u)"
for o in $opts; do
	: > "$tmp/inc/$o.h"
done

# The same for i386 (ILP32): its own machine/ link, the same stubs.
mkdir -p "$tmp/inc32"
ln -s "$sys/arch/i386/include" "$tmp/inc32/machine"
ln -s "$sys/arch/x86/include" "$tmp/inc32/x86"
ln -s "$sys/arch/i386/include" "$tmp/inc32/i386"
cp "$tmp/inc"/opt_*.h "$tmp/inc32/"

# locators.h, as config(1) generates it, for the pci attribute only
# (pci_user.c's child locators and the hooked pci.c).
cat > "$tmp/inc/locators.h" <<'LOC'
#define	PCICF_DEV		0
#define	PCICF_DEV_DEFAULT	-1
#define	PCICF_FUNCTION		1
#define	PCICF_FUNCTION_DEFAULT	-1
#define	PCICF_NLOCS		2
#define	PCIBUSCF_BUS		0
#define	PCIBUSCF_BUS_DEFAULT	-1
#define	PCIBUSCF_NLOCS		1
LOC
cp "$tmp/inc/locators.h" "$tmp/inc32/"

cflags="--target=x86_64-unknown-netbsd -std=gnu99 -ffreestanding -nostdinc
    -D_KERNEL -D_KERNEL_OPT -mcmodel=kernel -mno-red-zone -mno-sse -mno-mmx
    -fno-builtin -Wall -Werror -Wno-unknown-warning-option
    -I$here/sys -I$tmp/inc -I$sys -I$sys/arch -I$src/common/include"

fail=0
check() {
	name=$1
	shift
	if "$@" > "$tmp/out" 2>&1; then
		echo "ok   $name"
	else
		echo "FAIL $name"
		sed 's/^/     /' "$tmp/out"
		fail=1
	fi
}

# 1. The kernel file, LP64 and ILP32.
# shellcheck disable=SC2086
check "sys/dev/pci/pci_user.c (kernel, amd64, -Wshorten-64-to-32)" \
    "$CLANG" $cflags -Wshorten-64-to-32 -c "$here/sys/dev/pci/pci_user.c" \
    -o /dev/null
# shellcheck disable=SC2086
check "sys/dev/pci/pci_user.c (kernel, i386 ILP32, -Wshorten-64-to-32)" \
    "$CLANG" --target=i386-unknown-netbsd -std=gnu99 -ffreestanding \
    -nostdinc -D_KERNEL -D_KERNEL_OPT -mno-sse -mno-mmx -fno-builtin \
    -Wall -Werror -Wshorten-64-to-32 -Wno-unknown-warning-option \
    -I"$here/sys" -I"$tmp/inc32" -I"$sys" -I"$sys/arch" \
    -I"$src/common/include" -c "$here/sys/dev/pci/pci_user.c" -o /dev/null

# 1b. The hooks: apply.sh on copies of the three files it edits, then
#     compile the hooked pci.c and pci_usrreq.c.
mkdir -p "$tmp/hook/sys/dev/pci"
cp "$sys/dev/pci/files.pci" "$sys/dev/pci/pci.c" "$sys/dev/pci/pci_usrreq.c" \
    "$tmp/hook/sys/dev/pci/"
check "apply.sh hooks apply" sh "$here/apply.sh" "$tmp/hook"
for f in pci.c pci_usrreq.c; do
	# shellcheck disable=SC2086
	# NetBSD's own files: -Wno-pointer-sign as NetBSD's clang builds
	# use; our own file above gets no such allowance.
	check "hooked sys/dev/pci/$f (kernel, amd64)" \
	    "$CLANG" $cflags -Wno-pointer-sign -c "$tmp/hook/sys/dev/pci/$f" -o /dev/null
done

# 2. The ABI header alone, kernel side and user side (-nostdlibinc keeps
#    clang's own freestanding <stdint.h>; sys/ioccom.h is the tree's).
printf '#include <dev/pci/pciuserio.h>\nint pciuser_hdr_ok;\n' > "$tmp/hdr.c"
# shellcheck disable=SC2086
check "sys/dev/pci/pciuserio.h (kernel)" \
    "$CLANG" $cflags -c "$tmp/hdr.c" -o /dev/null
check "sys/dev/pci/pciuserio.h (user)" \
    "$CLANG" --target=x86_64-unknown-netbsd -ffreestanding -nostdlibinc \
    -Wall -Werror -I"$here/sys" -I"$sys" -c "$tmp/hdr.c" -o /dev/null

# 3. ABI values: real <sys/ioccom.h> versus abi-shim/sys/ioccom.h.
check "abi-probe.c (static, real sys/ioccom.h)" \
    "$CLANG" --target=x86_64-unknown-netbsd -ffreestanding -nostdlibinc \
    -DABI_PROBE_STATIC -Wall -Werror -I"$here/sys" -I"$sys" \
    -S "$here/abi-probe.c" -o "$tmp/real.s"
check "abi-probe.c (static, abi-shim)" \
    "$CLANG" --target=x86_64-unknown-netbsd -ffreestanding -nostdlibinc \
    -DABI_PROBE_STATIC -Wall -Werror -I"$here/sys" -I"$here/abi-shim" \
    -S "$here/abi-probe.c" -o "$tmp/shim.s"
if [ -f "$tmp/real.s" ] && [ -f "$tmp/shim.s" ]; then
	grep -E '^abi_|\.quad' "$tmp/real.s" > "$tmp/real.v"
	grep -E '^abi_|\.quad' "$tmp/shim.s" > "$tmp/shim.v"
	n=$(grep -c '\.quad' "$tmp/real.v" || true)
	check "abi-shim encodes like the tree's sys/ioccom.h ($n values)" \
	    cmp "$tmp/real.v" "$tmp/shim.v"
fi
if command -v "$HOSTCC" >/dev/null 2>&1; then
	check "abi-probe.c (host $HOSTCC, abi-shim)" \
	    "$HOSTCC" -Wall -Werror -I"$here/sys" -I"$here/abi-shim" \
	    "$here/abi-probe.c" -o "$tmp/abi-probe"
	[ -x "$tmp/abi-probe" ] && check "abi-probe runs" "$tmp/abi-probe"
fi

if [ $fail -ne 0 ]; then
	echo "compile-check: FAILED against $sys" >&2
	exit 1
fi
echo "compile-check: all passed against $sys"
