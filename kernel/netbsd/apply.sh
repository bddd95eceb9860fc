#!/bin/sh
#
# apply.sh <netbsd-src>
#
# Copy the pci(4) user driver files into a NetBSD source tree and add
# the hooks to existing files (DESIGN.md, "Shape").  Only edits files;
# builds nothing.  Refuses to run twice on one tree.
#
set -eu
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "apply: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: $0 <path-to-netbsd-src (containing sys/)>"
src=$(cd "$1" 2>/dev/null && pwd) || die "'$1' is not a directory"
sys=$src/sys
for f in dev/pci/files.pci dev/pci/pci.c dev/pci/pci_usrreq.c; do
	[ -f "$sys/$f" ] || die "'$sys' lacks $f"
done
grep -q pciuser "$sys/dev/pci/pci_usrreq.c" && die "already applied"

cp "$here/sys/dev/pci/pci_user.c" "$here/sys/dev/pci/pciuserio.h" \
    "$sys/dev/pci/"
mkdir -p "$src/share/man/man4"
cp "$here/share/man/man4/pciuser.4" "$src/share/man/man4/"

# 1. files.pci: build pci_user.c with pci(4); the pciuser child driver
#    that owns a claimed function attaches at pci, and the GENERIC
#    kernels configure it (where the tree has them).
printf 'device\tpciuser\nattach\tpciuser at pci\nfile\tdev/pci/pci_user.c\t\tpci\n' \
    >> "$sys/dev/pci/files.pci"
for conf in "$sys/arch/amd64/conf/GENERIC" "$sys/arch/i386/conf/GENERIC"; do
	[ -f "$conf" ] || continue
	cp "$conf" "$conf.orig"
	printf '\n# processes that claim a PCI function (pciuser(4))\npciuser* at pci? dev ? function ?\n' \
	    >> "$conf"
done

# 2. pci_usrreq.c: every open of /dev/pciN is cloned by pciuser_open().
sed -i.orig \
    -e 's|^#include <dev/pci/pciio.h>$|&\n#include <dev/pci/pciuserio.h>|' \
    -e '/^pciopen(/,/^}/s|^\treturn 0;$|\treturn pciuser_open(dev, flags, mode, l);|' \
    "$sys/dev/pci/pci_usrreq.c"

# 3. pci.c: pcidetach() lets pciuser tear its files down (or refuse)
#    before the children go;
# 4. and tells it when they have gone (or failed to), so that opens in
#    between see a dying bus.  (A claimed function needs no hook: its
#    pciuser child is its driver.)
sed -i.orig \
    -e 's|^#include <dev/pci/pcivar.h>$|&\n#include <dev/pci/pciuserio.h>|' \
    -e '/^pcidetach(device_t self, int flags)$/,/^}/s|^\tif ((rc = config_detach_children(self, flags)) != 0)$|\tif ((rc = pciuser_busdetach(device_private(self), flags)) != 0)\n\t\treturn rc;\n\trc = config_detach_children(self, flags);\n\tpciuser_busdetach_done(device_private(self));\n\tif (rc != 0)|' \
    "$sys/dev/pci/pci.c"

grep -q 'pciuser_open' "$sys/dev/pci/pci_usrreq.c" || die "hook 2 did not apply"
grep -q 'pciuser_busdetach(' "$sys/dev/pci/pci.c" || die "hook 3 did not apply"
grep -q 'pciuser_busdetach_done' "$sys/dev/pci/pci.c" || die "hook 4 did not apply"
echo "apply: done; originals kept as *.orig; add pciuser.4 to share/man/man4/Makefile by hand"
