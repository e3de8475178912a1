#!/bin/sh
# Runs as mmdebstrap's customize hook (as root, or as root of its user namespace):
# configures the guest tree $1, then writes vmlinuz, initrd.img, packages.tsv and
# disk.img into $1/run/vibebox-work/image, using the guest files in
# $1/run/vibebox-work/guest. That directory is a tmpfs mounted by an earlier hook:
# the files come in and go out through mmdebstrap's sync-in/sync-out, so nothing
# here needs to reach the invoking user's home (which the namespace's root, a
# subordinate uid, may not be able to read or write).
set -eu
ROOT=$1
WORK="$ROOT/run/vibebox-work"
OUT="$WORK/image"
GUEST="$WORK/guest"
mkdir -p "$OUT"
phase() { echo "vibebox-phase: $*"; }

phase "configuring the guest (user vibecoder, sshd, init)"
chroot "$ROOT" useradd --create-home --shell /bin/bash --uid 1000 --groups sudo --password '*' vibecoder
echo 'vibecoder ALL=(ALL) NOPASSWD:ALL' >"$ROOT/etc/sudoers.d/vibecoder"
chmod 440 "$ROOT/etc/sudoers.d/vibecoder"
echo vibebox >"$ROOT/etc/hostname"
cat >"$ROOT/etc/fstab" <<'FSTAB'
# The initrd (vibebox's initrd-init) mounts the root disk, /proc, /sys, /dev,
# /dev/pts, /dev/shm, /run and /tmp; vibebox-init mounts the shares.
FSTAB
printf '127.0.0.1 localhost\n127.0.1.1 vibebox\n::1 localhost\n' >"$ROOT/etc/hosts"
install -m 755 "$GUEST/vibebox-init" "$ROOT/sbin/vibebox-init"
install -m 755 "$GUEST/vibebox-agent" "$ROOT/sbin/vibebox-agent"
install -m 644 "$GUEST/profile.sh" "$ROOT/etc/profile.d/vibebox.sh"
mkdir -p "$ROOT/etc/ssh/sshd_config.d"
install -m 644 "$GUEST/sshd.conf" "$ROOT/etc/ssh/sshd_config.d/vibebox.conf"
# Host keys are made at each instance's first boot, never shipped.
rm -f "$ROOT"/etc/ssh/ssh_host_*
rm -f "$ROOT"/var/cache/apt/archives/*.deb
rm -rf "$ROOT"/var/lib/apt/lists/*
rm -f "$ROOT"/boot/initrd.img*

phase "extracting the kernel and building the initrd"
KVER=$(ls "$ROOT/lib/modules" | head -n 1)
cp "$ROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
echo "$KVER" >"$OUT/kernel"
I="$OUT/initrd-root"
rm -rf "$I"
mkdir -p "$I/bin" "$I/lib/modules" "$I/proc" "$I/sys" "$I/dev" "$I/newroot"
cp "$ROOT/bin/busybox" "$I/bin/busybox"
install -m 755 "$GUEST/initrd-init" "$I/init"
# The initrd's init loads these by name (q35: the devices are on PCI; virtio_mmio
# is not needed).
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
  virtio_blk failover net_failover virtio_net fuse virtiofs virtio_console; do
  f=$(find "$ROOT/lib/modules/$KVER" -name "$m.ko*" | head -n 1)
  [ -n "$f" ] || { echo "module $m not found in the guest kernel" >&2; exit 1; }
  cp "$f" "$I/lib/modules/$m.ko"
  # Drops the appended signature too: verifying it under TCG is slow.
  strip --strip-debug "$I/lib/modules/$m.ko"
done
(cd "$I" && find . | cpio -o -H newc --quiet -R 0:0) >"$OUT/initrd.img"
# microvm + PVH: an initrd whose size is not a multiple of 4096 can corrupt ACPI tables.
truncate -s %4096 "$OUT/initrd.img"
rm -rf "$I"

chroot "$ROOT" dpkg-query -W -f '${Package}\t${Version}\n' >"$OUT/packages.tsv"

phase "making the root disk (mkfs.ext4 -d)"
# A non-recursive bind mount shows the tree without the /proc, /sys and /dev
# that mmdebstrap mounted inside it.
view=$(mktemp -d)
mount --bind "$ROOT" "$view"
used=$(du -smx "$view" | cut -f1)
size=$((used + used / 4 + 256))
status=0
mkfs.ext4 -q -F -L vibebox-root -d "$view" "$OUT/disk.img" "${size}M" || status=$?

phase "writing the root tree for the container runtime (rootfs.tar)"
# The container runtime unpacks this as root of a user namespace whose id 0 is
# the host user, and runs the box in a namespace nested in it that maps box id
# 1000 (vibecoder) to that id 0 and every other box id n to n + 1. The owners
# are written already shifted that way (tar --owner-map), so one plain
# `tar -x` gives a tree the box sees with its own owners, setuid bits kept.
map="$WORK/idmap"
: >"$map"
if [ $status -eq 0 ]; then
  for id in $(find "$view" -xdev -printf '%U\n%G\n' | sort -un); do
    if [ "$id" -eq 1000 ]; then echo "+1000 +0"; elif [ "$id" -lt 65535 ]; then echo "+$id +$((id + 1))"; else
      echo "an owner id of $id is in the image; the container runtime maps ids up to 65534" >&2; status=1
    fi
  done >"$map"
fi
[ $status -eq 0 ] && { tar --numeric-owner --owner-map="$map" --group-map="$map" -cpf "$OUT/rootfs.tar" -C "$view" . || status=$?; }
umount "$view"
rmdir "$view"
exit $status
