#!/usr/bin/env bash
# Prepares everything the test command needs: host tools (QEMU and busybox for
# the bench, clang for the NetBSD ABI checks), a Debian guest kernel
# (extracted, never installed on the host) and the initramfs.
# Idempotent; a second run only re-checks versions and hashes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/vm"
INIT_SH="$ROOT/vm/init.sh"

# The modules the guest needs; vm/setup.sh adds what each depends on (modules.dep) and
# orders them, because busybox insmod does no dependency resolution.
# crc32c_generic: ext4's and jbd2's checksums reach it through the crypto API (a soft
# dependency modules.dep does not list).
MODULES=(
  vfio-pci vfio_iommu_type1
  virtio_pci 9pnet_virtio 9p
  pci-stub uio_pci_generic
  nbd ublk_drv
  crc32c_generic ext4
  e1000e tun
)

# nbd-client and fio run in the guest from the shared root (the NBD export test, bench:nvme).
# libclang-rt-14-dev: clang's ASan/UBSan runtimes, for the NetBSD kernel harness
# (test/unit/netbsd-harness.test.ts builds kernel/netbsd/harness with them).
APT_PACKAGES=(qemu-system-x86 busybox-static cpio gzip xz-utils zstd clang libclang-rt-14-dev nbd-client fio)

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
  command -v zstd >/dev/null || missing+=(zstd)
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

# The guest kernel comes from the host release's backports (bookworm-backports: 6.12),
# which has ublk_drv; the release's own 6.1 does not. apt reads a sources list of its
# own under .cache/vm/apt, so the host's apt configuration and lists stay untouched.
# The mirror is the one the host's apt already uses for its release.
BPO_DIR="$CACHE/apt"
bpo_apt() {
  apt-get -o Dir::Etc::sourcelist="$BPO_DIR/sources.list" -o Dir::Etc::sourceparts=- \
    -o Dir::State::Lists="$BPO_DIR/lists" -o Dir::State::status=/dev/null \
    -o Dir::Cache="$BPO_DIR/cache" -o APT::Sandbox::User=root "$@"
}
bpo_cache() {
  apt-cache -o Dir::Etc::sourcelist="$BPO_DIR/sources.list" -o Dir::Etc::sourceparts=- \
    -o Dir::State::Lists="$BPO_DIR/lists" -o Dir::State::status=/dev/null \
    -o Dir::Cache="$BPO_DIR/cache" "$@"
}

bpo_update() {
  local codename uri
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  [[ -n $codename ]] || die "/etc/os-release names no VERSION_CODENAME: not a Debian host?"
  uri="$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
    | awk -v r="$codename" '$2 == r { print $1; exit }')"
  [[ -n $uri ]] || die "the host's apt has no source for $codename to take the mirror from"
  mkdir -p "$BPO_DIR/lists/partial" "$BPO_DIR/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $codename-backports main" \
    >"$BPO_DIR/sources.list"
  say "apt-get update ($codename-backports, lists in $BPO_DIR)"
  bpo_apt update -qq || die "apt-get update of $codename-backports failed (see above)"
}

# Prints the package name the backports linux-image-amd64 depends on, e.g. linux-image-6.12.95+deb12-amd64.
resolve_kernel_package() {
  bpo_cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}

ensure_kernel() {
  local pkg
  # Before the first update there are no lists: an empty answer, not an error.
  pkg="$(resolve_kernel_package || true)"
  if [[ -z $pkg && $EUID -eq 0 ]]; then
    bpo_update
    pkg="$(resolve_kernel_package || true)"
  fi
  [[ -n $pkg ]] || die "no linux-image-amd64 in the backports lists (run vm/setup.sh as root once)"
  KDIR="$CACHE/$pkg"
  if [[ ! -f "$KDIR/.extracted" ]]; then
    # A new kernel ABI replaces the old one: each extracted tree is ~400 MB.
    rm -rf "$CACHE"/linux-image-*
    say "downloading $pkg"
    # Root's apt drops privileges to _apt, which cannot write into the cache dir.
    (cd "$CACHE" && bpo_apt download -qq "$pkg") || die "apt-get download $pkg failed"
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

# Under TCG the guest spends ~4 s unpacking a compressed bzImage. A kernel built with
# CONFIG_PVH boots from its plain ELF image instead, so unpack it once here.
# .cache/vm/kernel points at whichever image QEMU should boot.
ensure_boot_kernel() {
  local vmlinuz="$1" vmlinux="$KDIR/vmlinux" off
  local unpack=(xz -dc) magic=$'\xfd7zXZ'
  # 6.12's bzImage is zstd-compressed (CONFIG_KERNEL_ZSTD), 6.1's xz.
  if grep -q '^CONFIG_KERNEL_ZSTD=y' "$KDIR/boot/config-$KVER"; then
    unpack=(zstd -dcq); magic=$'\x28\xb5\x2f\xfd'
  fi
  if [[ ! -f $vmlinux ]] && grep -q '^CONFIG_PVH=y' "$KDIR/boot/config-$KVER" \
     && off="$(LC_ALL=C grep -abo "$magic" "$vmlinuz" | head -n1 | cut -d: -f1)" && [[ -n $off ]]; then
    # The decompressor reports the bytes after the stream as corrupt data; the ELF check below decides.
    tail -c +"$((off + 1))" "$vmlinuz" | "${unpack[@]}" >"$vmlinux.tmp" 2>/dev/null || true
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

# Prints the paths (under $1) of MODULES and of everything they depend on, each after
# its dependencies. Debian's package ships no modules.dep (depmod makes it at install):
# the dependencies are read from each module's own .modinfo ("depends=a,b").
# A module built into the kernel (modules.builtin) needs nothing.
module_load_order() {
  local moddir="$1" f n
  declare -A path=() builtin=() seen=()
  while read -r f; do
    n="${f##*/}"; n="${n%.xz}"; n="${n%.ko}"; path[${n//-/_}]="$f"
  done < <(cd "$moddir" && find kernel \( -name '*.ko' -o -name '*.ko.xz' \))
  while read -r f; do
    n="${f##*/}"; n="${n%.ko}"; builtin[${n//-/_}]=1
  done <"$moddir/modules.builtin"
  visit() {
    local n="${1//-/_}" d deps
    [[ -n ${seen[$n]:-} || -n ${builtin[$n]:-} ]] && return
    seen[$n]=1
    [[ -n ${path[$n]:-} ]] || die "module $1 not found under $moddir"
    case "${path[$n]}" in
      *.xz) deps="$(xz -dc "$moddir/${path[$n]}" | tr '\0' '\n' | sed -n 's/^depends=//p')" ;;
      *)    deps="$(tr '\0' '\n' <"$moddir/${path[$n]}" | sed -n 's/^depends=//p')" ;;
    esac
    for d in ${deps//,/ }; do visit "$d"; done
    echo "${path[$n]}"
  }
  for n in "${MODULES[@]}"; do visit "$n"; done
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
  local moddir="$KDIR/lib/modules/$KVER" rel m order
  order="$(module_load_order "$moddir")"
  while read -r rel; do
    m="${rel##*/}"; m="${m%.xz}"; m="${m%.ko}"
    case "$rel" in
      *.xz) xz -dc "$moddir/$rel" >"$stage/lib/modules/$m.ko" ;;
      *)    cp "$moddir/$rel" "$stage/lib/modules/$m.ko" ;;
    esac
    echo "$m" >>"$stage/etc/modules.order"
  done <<<"$order"
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
