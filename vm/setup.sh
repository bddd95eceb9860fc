#!/usr/bin/env bash
# Prepares everything the test command needs: host tools (QEMU and busybox for
# the bench, clang for the NetBSD ABI checks), a Debian guest kernel
# (extracted, never installed on the host) and the initramfs.
# Idempotent; a second run only re-checks versions and hashes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/vm"
INIT_SH="$ROOT/vm/init.sh"

# Load order matters: busybox insmod does no dependency resolution.
MODULES=(
  irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci
  virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
  netfs fscache 9pnet 9pnet_virtio 9p
  pci-stub uio uio_pci_generic
  nbd
  crc16 mbcache jbd2 crc32c_generic ext4
  e1000e tun
)

# nbd-client and fio run in the guest from the shared root (the NBD export test, bench:nvme).
# libclang-rt-14-dev: clang's ASan/UBSan runtimes, for the NetBSD kernel harness
# (test/unit/netbsd-harness.test.ts builds kernel/netbsd/harness with them).
APT_PACKAGES=(qemu-system-x86 busybox-static cpio gzip xz-utils clang libclang-rt-14-dev nbd-client fio)

say() { echo "vm/setup: $*" >&2; }
die() { say "error: $*"; exit 1; }

apt_updated=
apt_update_once() {
  [[ -n $apt_updated ]] && return
  say "apt-get update"
  apt-get update -qq
  apt_updated=1
}

ensure_host_tools() {
  local missing=()
  command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86_64)
  # The dynamic `busybox` package would not run inside the initramfs.
  [[ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" == "install ok installed" ]] \
    || missing+=(busybox-static)
  command -v cpio >/dev/null || missing+=(cpio)
  command -v gzip >/dev/null || missing+=(gzip)
  command -v xz >/dev/null || missing+=(xz-utils)
  # The unit suite compiles NetBSD's ABI for x86_64-unknown-netbsd.
  command -v clang >/dev/null || missing+=(clang)
  [[ "$(dpkg-query -W -f='${Status}' libclang-rt-14-dev 2>/dev/null)" == "install ok installed" ]] \
    || missing+=(libclang-rt-14-dev)
  [[ -x /usr/sbin/nbd-client || -x /sbin/nbd-client ]] || missing+=(nbd-client)
  command -v fio >/dev/null || missing+=(fio)
  [[ ${#missing[@]} -eq 0 ]] && return
  local cmd="apt-get update && apt-get install -y --no-install-recommends ${APT_PACKAGES[*]}"
  if [[ $EUID -ne 0 ]]; then
    say "missing: ${missing[*]}; as root run:"
    echo "  $cmd" >&2
    exit 2
  fi
  say "installing ${missing[*]}"
  apt_update_once
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
}

# Prints the package name linux-image-amd64 currently depends on, e.g. linux-image-6.1.0-56-amd64.
resolve_kernel_package() {
  apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}

ensure_kernel() {
  local pkg
  pkg="$(resolve_kernel_package)"
  if [[ -z $pkg && $EUID -eq 0 ]]; then
    apt_update_once
    pkg="$(resolve_kernel_package)"
  fi
  [[ -n $pkg ]] || die "apt-cache does not know linux-image-amd64 (run apt-get update as root)"
  KDIR="$CACHE/$pkg"
  if [[ ! -f "$KDIR/.extracted" ]]; then
    # A new kernel ABI replaces the old one: each extracted tree is ~400 MB.
    rm -rf "$CACHE"/linux-image-*
    say "downloading $pkg"
    # Root's apt drops privileges to _apt, which cannot write into the cache dir.
    (cd "$CACHE" && apt-get download -qq -o APT::Sandbox::User=root "$pkg") \
      || die "apt-get download $pkg failed"
    local deb
    deb="$(ls "$CACHE"/"$pkg"_*.deb)"
    dpkg -x "$deb" "$KDIR"
    rm -f "$deb"
    touch "$KDIR/.extracted"
  fi
  local vmlinuz
  vmlinuz="$(ls "$KDIR"/boot/vmlinuz-* 2>/dev/null | head -n1)"
  [[ -n $vmlinuz ]] || die "no vmlinuz in $KDIR/boot"
  KVER="${vmlinuz##*/vmlinuz-}"
  ensure_boot_kernel "$vmlinuz"
}

# Under TCG the guest spends ~4 s unpacking an xz bzImage. A kernel built with
# CONFIG_PVH boots from its plain ELF image instead, so unpack it once here.
# .cache/vm/kernel points at whichever image QEMU should boot.
ensure_boot_kernel() {
  local vmlinuz="$1" vmlinux="$KDIR/vmlinux" off
  if [[ ! -f $vmlinux ]] && grep -q '^CONFIG_PVH=y' "$KDIR/boot/config-$KVER" \
     && off="$(LC_ALL=C grep -abo $'\xfd7zXZ' "$vmlinuz" | head -n1 | cut -d: -f1)" && [[ -n $off ]]; then
    # xz reports the bytes after the stream as corrupt data; the ELF check below decides.
    tail -c +"$((off + 1))" "$vmlinuz" | xz -dc >"$vmlinux.tmp" 2>/dev/null || true
    if [[ "$(head -c 4 "$vmlinux.tmp" | od -An -c | tr -d ' ')" == '177ELF' ]]; then
      mv "$vmlinux.tmp" "$vmlinux"
    else
      rm -f "$vmlinux.tmp"
      say "could not unpack $vmlinuz; booting it compressed (slower)"
    fi
  fi
  local target="$vmlinuz"
  [[ -f $vmlinux ]] && target="$vmlinux"
  ln -sfn "${target#"$CACHE/"}" "$CACHE/kernel"
}

file_sha() { sha256sum "$1" | cut -d' ' -f1; }

# One line per input; vm/bench.ts reads the same file to refuse a stale initramfs.
initramfs_key() {
  echo "init.sh $(file_sha "$INIT_SH")"
  echo "setup.sh $(file_sha "$ROOT/vm/setup.sh")"
  echo "kernel $KVER"
  echo "busybox $(dpkg-query -W -f='${Version}' busybox-static)"
}

ensure_initramfs() {
  local key
  key="$(initramfs_key)"
  if [[ -f "$CACHE/initramfs.gz" && -f "$CACHE/initramfs.key" && "$(cat "$CACHE/initramfs.key")" == "$key" ]]; then
    return
  fi
  say "building initramfs for $KVER"
  stage="$(mktemp -d "$CACHE/initramfs.XXXXXX")"
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage"/{bin,dev,proc,sys,tmp,mnt,etc,lib/modules}
  cp /bin/busybox "$stage/bin/busybox"
  # The kernel execs /init through its #! line before busybox can install its applets.
  ln -s busybox "$stage/bin/sh"
  install -m 0755 "$INIT_SH" "$stage/init"
  local moddir="$KDIR/lib/modules/$KVER" m f
  for m in "${MODULES[@]}"; do
    f="$(find "$moddir" \( -name "$m.ko" -o -name "$m.ko.xz" \) -print -quit)"
    [[ -n $f ]] || die "module $m not found under $moddir"
    case "$f" in
      *.xz) xz -dc "$f" >"$stage/lib/modules/$m.ko" ;;
      *)    cp "$f" "$stage/lib/modules/$m.ko" ;;
    esac
    echo "$m" >>"$stage/etc/modules.order"
  done
  (cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$CACHE/initramfs.gz.tmp"
  mv "$CACHE/initramfs.gz.tmp" "$CACHE/initramfs.gz"
  echo "$key" >"$CACHE/initramfs.key"
}

mkdir -p "$CACHE"
# Parallel test runs may all call setup; one builds, the others wait and find it done.
exec 9>"$CACHE/.setup.lock"
flock 9
ensure_host_tools
ensure_kernel
ensure_initramfs
say "ready: kernel $KVER, $CACHE/initramfs.gz"
