#!/bin/bash
# Build (or reuse) the test-bed rootfs and print its directory on stdout.
#
#   tests/bed/rootfs.sh            # -> /var/cache/postmaster-bed/rootfs-KEY
#   tests/bed/rootfs.sh --prune    # same, then delete every other key's files
#
# KEY is a hash of packages.txt, provision.sh, this script and the suite, so the
# cache is invalidated exactly when what goes into the rootfs changes. Layout:
#   rootfs-KEY.tar.zst  the finished rootfs, the thing that is kept
#   rootfs-KEY/         unpacked once from it, reused while present; booted with
#                       --volatile=overlay, so boots never write to it
# Everything but the directory path goes to stderr. Concurrent callers serialise on
# a lock, so parallel test runs build once.
#
# Environment: POSTMASTER_BED_CACHE (default /var/cache/postmaster-bed),
#              POSTMASTER_BED_SUITE (default trixie; bookworm is the fallback),
#              POSTMASTER_BED_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${POSTMASTER_BED_CACHE:-/var/cache/postmaster-bed}
suite=${POSTMASTER_BED_SUITE:-trixie}
mirror=${POSTMASTER_BED_MIRROR:-http://deb.debian.org/debian}
prune=0
case "${1:-}" in
--prune) prune=1 ;;
"") ;;
*) echo "usage: $0 [--prune]" >&2; exit 2 ;;
esac

log() { echo "rootfs: $*" >&2; }

key=$({ echo "suite=$suite"; cat "$here/packages.txt" "$here/provision.sh" "$here/rootfs.sh"; } |
	sha256sum | cut -c1-16)
tarball=$cache/rootfs-$key.tar.zst
dir=$cache/rootfs-$key

install -d -m 0755 "$cache"
exec 9>"$cache/.lock"
flock 9

# Unmount whatever a failed debootstrap/chroot left below $1 (deepest first), then
# delete it. Never follows into a mount: rm runs only once nothing is mounted there.
remove_tree() {
	local d=$1 m
	[ -e "$d" ] || return 0
	for m in $(findmnt -rno TARGET | grep -F "$d" | sort -r); do
		case "$m" in "$d" | "$d"/*) umount -l "$m" || true ;; esac
	done
	rm -rf --one-file-system "$d"
}

# A tree that is fully unpacked or built is renamed into place, so a directory
# (or tarball) under its final name is always complete.
start=$EPOCHREALTIME
elapsed() { awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $start }"; }

if [ -d "$dir" ]; then
	log "cache HIT key=$key (unpacked dir reused) in $(elapsed)s"
elif [ -f "$tarball" ]; then
	remove_tree "$dir.tmp"
	mkdir "$dir.tmp"
	zstd -dc "$tarball" | tar -C "$dir.tmp" --numeric-owner --xattrs --xattrs-include='*' -xpf -
	mv "$dir.tmp" "$dir"
	log "cache HIT key=$key (unpacked $tarball) in $(elapsed)s"
else
	log "cache MISS key=$key: building $suite rootfs (about 70-90 s)"
	build=$cache/build-$key
	remove_tree "$build"
	trap 'remove_tree "$build"' EXIT
	packages=$(grep -Ev '^[[:space:]]*(#|$)' "$here/packages.txt" | tr -d ' \t' | paste -sd, -)
	DEBIAN_FRONTEND=noninteractive debootstrap --variant=minbase --include="$packages" \
		"$suite" "$build" "$mirror" >"$cache/build-$key.log" 2>&1 || {
		# debootstrap's own log names the package that broke; it lives in the tree
		# the EXIT trap removes, so keep it beside the output.
		cp -f "$build/debootstrap/debootstrap.log" "$cache/build-$key.debootstrap.log" 2>/dev/null || true
		tail -n 30 "$cache/build-$key.log" >&2
		log "debootstrap failed, logs: $cache/build-$key.log $cache/build-$key.debootstrap.log"
		exit 1
	}
	install -m 0755 "$here/provision.sh" "$build/root/provision.sh"
	# No /proc etc. needed: provision.sh only writes files, adds users and runs
	# systemctl enable/mask, which work offline in a chroot.
	DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		chroot "$build" /bin/sh /root/provision.sh >&2
	rm -f "$build/root/provision.sh"
	log "debootstrap + provision took $(elapsed)s; packing"
	tar -C "$build" --numeric-owner --xattrs --xattrs-include='*' -cf - . |
		zstd -q -f -T0 -6 -o "$tarball.tmp"  # -f: over a stale .tmp
	mv "$tarball.tmp" "$tarball"
	mv "$build" "$dir"
	trap - EXIT
	rm -f "$cache/build-$key.log"
	log "BUILT key=$key in $(elapsed)s: $(du -sh "$dir" | cut -f1) rootfs," \
		"$(du -h "$tarball" | cut -f1) tarball"
fi

if [ "$prune" = 1 ]; then
	for old in "$cache"/rootfs-* "$cache"/build-*; do
		[ -e "$old" ] || continue  # an unmatched glob
		case "$old" in "$dir" | "$tarball") continue ;; esac
		# A directory some nspawn is still booted from stays.
		if [ -d "$old" ] && grep -qsF -- "--directory=$old" /proc/[0-9]*/cmdline; then
			log "keeping $old: in use"
			continue
		fi
		log "pruning $old"
		remove_tree "$old"
		# nspawn's image lock file beside the directory (empty, unlocked by now).
		rm -f "$cache/.#${old##*/}.lck"
	done
fi

echo "$dir"
