#!/bin/bash
# Remove everything a test bed leaves on the host: its systemd-nspawn (and every
# process in its cgroups), the cgroups themselves, the host side of its veth, the
# host bridge it created (pmbr-*), stray mounts under the rootfs cache and its state
# directory.
#
#   tests/bed/cleanup.sh            # every bed (after an interrupted run, in CI)
#   tests/bed/cleanup.sh NAME...    # only these machine names
#
# Bed.stop() runs it after shutting its container down, so this is the one place
# that knows what a bed leaves behind. Idempotent; safe when nothing is left.
# Only touches what is provably ours: nspawn processes booted from the bed cache,
# cgroups named postmaster-bed-*, veths and bridges recorded in
# /run/postmaster-bed/NAME/, and (in a sweep) pmbr-* bridges no live bed records.
set -uo pipefail

cache=${POSTMASTER_BED_CACHE:-/var/cache/postmaster-bed}
state=/run/postmaster-bed
prefix=postmaster-bed-
quiet=0
if [ "${1:-}" = --quiet ]; then quiet=1; shift; fi
say() { [ "$quiet" = 1 ] || echo "cleanup: $*" >&2; }

# nspawn processes of ours: started with --directory inside the cache. Prints
# "PID MACHINE" lines.
our_nspawns() {
	local p args a machine dir
	for p in /proc/[0-9]*; do
		{ mapfile -d '' -t args <"$p/cmdline"; } 2>/dev/null || continue
		[ "${#args[@]}" -gt 0 ] && [ "${args[0]##*/}" = systemd-nspawn ] || continue
		machine= dir=
		for a in "${args[@]}"; do
			case "$a" in
			--machine=*) machine=${a#--machine=} ;;
			--directory=*) dir=${a#--directory=} ;;
			esac
		done
		case "$dir" in "$cache"/*) echo "${p#/proc/} $machine" ;; esac
	done
}

if [ $# -gt 0 ]; then
	names=("$@")
else
	# Every name that left any trace: a state dir, a cgroup or a running nspawn.
	mapfile -t names < <({
		for d in "$state"/*/ /sys/fs/cgroup/*/"$prefix"*/; do
			[ -d "$d" ] || continue
			d=${d%/}; d=${d##*/}; echo "${d#"$prefix"}"
		done
		our_nspawns | cut -d' ' -f2
	} | sort -u)
fi

for name in "${names[@]}"; do
	[ -n "$name" ] || continue
	# A sweep spares live beds: their Bed process holds NAME.lock. Named calls
	# (Bed.stop() holds the lock itself) go ahead.
	if [ $# = 0 ] && [ -e "$state/$name.lock" ] && ! flock -n "$state/$name.lock" true; then
		say "$name: in use by a running Bed, skipped"
		continue
	fi

	# 1. The container: TERM lets nspawn power it off cleanly (~0.5 s). It is sent
	#    again every 2 s because one that reaches a booting PID 1 before systemd
	#    installed its handlers is dropped; KILL after 20 s.
	pids=$(our_nspawns | awk -v n="$name" '$2 == n { print $1 }')
	if [ -n "$pids" ]; then
		say "$name: stopping nspawn $pids"
		for i in $(seq 0 99); do
			kill -0 $pids 2>/dev/null || break
			[ $((i % 10)) = 0 ] && kill -TERM $pids 2>/dev/null
			sleep 0.2
		done
		kill -KILL $pids 2>/dev/null && say "$name: nspawn had to be killed"
	fi

	# 2. Anything still in the bed's cgroups (both hierarchies), then the cgroups,
	#    deepest first: a leftover "payload" cgroup makes the next nspawn fail.
	for cg in /sys/fs/cgroup/*/"$prefix$name"; do
		[ -d "$cg" ] || continue
		for _ in $(seq 50); do
			procs=$(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null)
			[ -z "$procs" ] && break
			kill -KILL $procs 2>/dev/null
			sleep 0.1
		done
		find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
		if [ -d "$cg" ]; then say "$name: could not remove $cg"; else say "$name: removed $cg"; fi
	done

	# 3. The veth normally dies with the container's network namespace; delete the
	#    host side if anything kept that namespace alive.
	#    (ve-NAME of its own, vb-NAME when it joined a bridge.)
	veths=$(cat "$state/$name/veth" 2>/dev/null || printf '%s\n' "ve-$name" "vb-$name" | cut -c1-15)
	for veth in $veths; do
		if ip link show dev "$veth" >/dev/null 2>&1; then
			ip link delete dev "$veth" && say "$name: deleted $veth"
		fi
	done

	# 4. The host bridge this bed created (the last bed on it to stop).
	bridge=$(cat "$state/$name/bridge" 2>/dev/null)
	if [ -n "$bridge" ] && ip link show dev "$bridge" >/dev/null 2>&1; then
		ip link delete dev "$bridge" type bridge && say "$name: deleted bridge $bridge"
	fi

	# nspawn's mount-propagation dir survives a SIGKILLed nspawn.
	rm -rf --one-file-system "$state/$name" "/run/systemd/nspawn/propagate/$name"
done

# 5. A sweep also deletes every bed bridge (pmbr-*) that no remaining bed records:
#    what is left in $state now belongs to live beds.
if [ $# = 0 ]; then
	for dev in /sys/class/net/pmbr-*; do
		[ -e "$dev" ] || continue
		bridge=${dev##*/}
		grep -qsxF "$bridge" "$state"/*/bridge && continue
		ip link delete dev "$bridge" type bridge && say "deleted orphaned bridge $bridge"
	done
fi

# 6. nspawn mounts in a namespace of its own, so nothing should ever be mounted on
#    the host under the cache; an interrupted rootfs build can leave proc/sys below
#    build-KEY. Build dirs only while no build holds the lock (a live one needs them).
targets="$cache/rootfs-"
if exec 9>>"$cache/.lock" 2>/dev/null && flock -n 9; then targets+=$'\n'"$cache/build-"; fi
findmnt -rno TARGET | grep -F "$targets" | sort -r | while read -r m; do
	umount -l "$m" && say "unmounted $m"
done
exit 0
