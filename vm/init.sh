#!/bin/sh
# PID 1 of the bench guest (busybox sh). The host talks to it only through the
# writable 9p share `results`: it reads job.sh and bind.plan from there and
# writes output.log, status, dmesg.log (and init-error when setup fails) back.
# The guest never reboots: every path ends in `poweroff -f` so QEMU exits.

/bin/busybox --install -s /bin
export PATH=/bin

OUT=/tmp/upci-out

finish() {
  dmesg >"$OUT/dmesg.log" 2>/dev/null
  sync
  poweroff -f
}

fatal() {
  echo "upci-vm: FATAL: $*"
  echo "$*" >"$OUT/init-error" 2>/dev/null
  finish
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

while read -r m; do
  insmod "/lib/modules/$m.ko" || fatal "insmod $m failed"
done </etc/modules.order

# The results share sits inside a tmpfs /tmp so that the job's /tmp is
# guest-local scratch while $OUT still reaches the host.
mount -t tmpfs tmpfs /tmp
mkdir -p "$OUT"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results "$OUT" \
  || fatal "mounting the results share failed"
# cache=loose: the host root is read-only for the guest, so caching is safe; it cut
# node's module loading (koffi + typescript) by ~15-20% in measurements.
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /mnt \
  || fatal "mounting the host root share failed"
for d in proc sys dev; do
  mount -o bind "/$d" "/mnt/$d" || fatal "bind-mounting /$d failed"
done
# rbind, not bind: the results share is a submount of /tmp.
mount -o rbind /tmp /mnt/tmp || fatal "bind-mounting /tmp failed"
# The project has a share of its own, mounted at its host path: a checkout under
# the host's /tmp would otherwise be hidden by the guest's /tmp.
project=$(cat "$OUT/project.path") || fatal "no project.path in the results share"
mkdir -p "/mnt$project" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro project "/mnt$project" \
  || fatal "mounting the project share at $project failed"

summary=
if [ -f "$OUT/bind.plan" ]; then
  while read -r addr drv; do
    [ -n "$addr" ] || continue
    dev=/sys/bus/pci/devices/$addr
    [ -e "$dev" ] || fatal "no PCI device at $addr"
    if [ -e "$dev/driver" ]; then
      echo "$addr" >"$dev/driver/unbind" || fatal "unbinding $addr failed"
    fi
    if [ "$drv" != none ]; then
      echo "$drv" >"$dev/driver_override"
      echo "$addr" >/sys/bus/pci/drivers_probe
      bound=$(basename "$(readlink "$dev/driver")" 2>/dev/null)
      [ "$bound" = "$drv" ] || fatal "binding $addr to $drv failed (driver: ${bound:-none})"
    fi
    group=$(basename "$(readlink "$dev/iommu_group")")
    summary="$summary $addr=$drv/g$group"
  done <"$OUT/bind.plan"
fi

[ -f "$OUT/job.sh" ] || fatal "no job.sh in the results share"
read -r up _ </proc/uptime
echo "upci-vm: ready at ${up}s:$summary"

# env -i: the job sees only what job.sh exports, not the initramfs' environment.
{
  env -i /bin/chroot /mnt /bin/sh /tmp/upci-out/job.sh </dev/null
  echo $? >"$OUT/status"
} 2>&1 | tee "$OUT/output.log"

finish
