#!/bin/sh
# Installs postmaster on a Debian 13 host: the binary, its unit files, its users,
# directories, D-Bus policy and polkit rule. Run as root, again after every build:
# it only replaces what changed and repeats nothing that is done.
#
#     units/install-debian.sh [--enable] [BINARY]
#
# BINARY defaults to target/release/postmaster next to this directory. The daemon is
# not enabled or started unless --enable is given; if it is already running it is
# restarted, to run what was installed. postfix and dovecot must be installed first
# (their users and groups are used here).
#
# Where things go (the binary is built from source, so /usr/local where systemd
# looks there; D-Bus and polkit have no /usr/local directory):
#   /usr/local/bin/postmaster
#   /usr/local/lib/systemd/system/postmaster.service, postmaster-acme.socket,
#     postmaster-lmtp.socket, postmaster-lmtp.service (postfix's deliveries to dovecot:
#     main.cf as `postmaster render` writes it delivers to that socket),
#     postmaster-tls.socket, postmaster-tls.service (TLS for IMAP, POP3, ManageSieve
#     on 993, 995, 143, 110, 4190, in front of the dovecot.conf `postmaster render`
#     writes, which listens on loopback only)
#   /usr/local/lib/sysusers.d/postmaster.conf, /usr/local/lib/tmpfiles.d/postmaster.conf
#   /usr/local/lib/systemd/system/{dovecot,postfix,postfix@}.service.d/50-postmaster-hardening.conf
#   /usr/share/dbus-1/system.d/io.postmaster.Supervisor1.conf
#   /usr/share/polkit-1/rules.d/50-postmaster.rules
set -eu

usage() {
	echo "usage: $0 [--enable] [BINARY]" >&2
	exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
enable=no
binary=
for arg in "$@"; do
	case "$arg" in
	--enable) enable=yes ;;
	-h | --help) usage ;;
	-*) echo "$0: unknown option $arg" >&2; usage ;;
	*) [ -z "$binary" ] || usage; binary=$arg ;;
	esac
done
binary=${binary:-$here/../target/release/postmaster}

fail() {
	echo "$0: $*" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || fail "run me as root"
[ -x "$binary" ] || fail "$binary is not an executable file; build it (cargo build --release) or name it"
# Type=notify-reload is systemd 253's; Debian 13 has 257.
systemd_version=$(systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p')
[ "${systemd_version:-0}" -ge 253 ] ||
	fail "postmaster.service needs systemd 253 or newer (this is ${systemd_version:-unknown}); Debian 13 has 257"
getent group dovecot >/dev/null || fail "group dovecot is missing: install dovecot-core first"
getent passwd postfix >/dev/null || fail "user postfix is missing: install postfix first"
command -v postmap >/dev/null || fail "postmap is missing: install postfix first"
# rspamd signs outgoing mail with the DKIM keys postmaster keeps, which it reads
# through its group (tmpfiles below). With [dkim] enabled = false it is not needed.
getent group _rspamd >/dev/null ||
	fail "group _rspamd is missing: install rspamd first (it signs outgoing mail with DKIM)"

# dovecot.conf as `postmaster render` writes it files spam into Junk with Sieve and
# serves ManageSieve (4190): dovecot refuses to start without their modules.
[ -e /usr/lib/dovecot/modules/lib90_sieve_plugin.so ] ||
	fail "dovecot's Sieve plugin is missing: install dovecot-sieve first"
[ -x /usr/lib/dovecot/managesieve-login ] ||
	fail "dovecot's ManageSieve server is missing: install dovecot-managesieved first"

changed=no
# put_changed: whether the last put changed anything.
put_changed=no
# put MODE SOURCE TARGET: installs SOURCE as TARGET, root's, unless it is there
# already. Renamed into place: dbus-daemon, polkitd and a running postmaster never
# see half a file (and the temporary name ends in none of the suffixes they read).
put() {
	put_changed=no
	if [ -f "$3" ] && cmp -s "$2" "$3" && [ "$(stat -c %a:%u:%g "$3")" = "$(printf %o "$1"):0:0" ]; then
		return 0
	fi
	install -d -m 0755 "$(dirname "$3")"
	install -m "$1" -o root -g root "$2" "$3.postmaster-new"
	mv -f "$3.postmaster-new" "$3"
	echo "installed $3"
	changed=yes
	put_changed=yes
}

put 0755 "$binary" /usr/local/bin/postmaster
binary_changed=$put_changed
# The LMTP relay runs the binary too: a new one, or a new relay unit, restarts it.
lmtp_changed=$binary_changed
put 0644 "$here/postmaster.service" /usr/local/lib/systemd/system/postmaster.service
put 0644 "$here/postmaster-acme.socket" /usr/local/lib/systemd/system/postmaster-acme.socket
put 0644 "$here/postmaster-lmtp.socket" /usr/local/lib/systemd/system/postmaster-lmtp.socket
lmtp_socket_changed=$put_changed
put 0644 "$here/postmaster-lmtp.service" /usr/local/lib/systemd/system/postmaster-lmtp.service
[ "$put_changed" = no ] || lmtp_changed=yes
# The TLS front runs the binary too: a new one, or a new front unit, restarts it.
tls_changed=$binary_changed
put 0644 "$here/postmaster-tls.socket" /usr/local/lib/systemd/system/postmaster-tls.socket
tls_socket_changed=$put_changed
put 0644 "$here/postmaster-tls.service" /usr/local/lib/systemd/system/postmaster-tls.service
[ "$put_changed" = no ] || tls_changed=yes
put 0644 "$here/sysusers-postmaster.conf" /usr/local/lib/sysusers.d/postmaster.conf
put 0644 "$here/tmpfiles-postmaster.conf" /usr/local/lib/tmpfiles.d/postmaster.conf
# postfix and dovecot, hardened (drop-ins over Debian's units). They take effect at
# their next start: a running postfix or dovecot is not restarted here.
dropins=/usr/local/lib/systemd/system
put 0644 "$here/dovecot-hardening.conf" "$dropins/dovecot.service.d/50-postmaster-hardening.conf"
put 0644 "$here/postfix-hardening.conf" "$dropins/postfix.service.d/50-postmaster-hardening.conf"
put 0644 "$here/postfix-hardening.conf" "$dropins/postfix@.service.d/50-postmaster-hardening.conf"

# Users first (the directories belong to them), then the directories. Both are
# idempotent; at every boot systemd runs them again from the same files.
systemd-sysusers /usr/local/lib/sysusers.d/postmaster.conf
systemd-tmpfiles --create /usr/local/lib/tmpfiles.d/postmaster.conf

# Only now the bus policy and the polkit rule: dbus-daemon and polkitd load new
# files as soon as they appear, and the policy names group postmaster-admin, which
# dbus-daemon drops (until its next reload) if it does not exist yet.
put 0644 "$here/dbus-io.postmaster.Supervisor1.conf" /usr/share/dbus-1/system.d/io.postmaster.Supervisor1.conf
put 0644 "$here/polkit-postmaster.rules" /usr/share/polkit-1/rules.d/50-postmaster.rules
if systemctl --quiet is-active dbus.service; then
	systemctl reload dbus.service
fi
systemctl daemon-reload

if [ "$enable" = yes ]; then
	systemctl enable postmaster.service postmaster-lmtp.socket
elif systemctl --quiet is-enabled postmaster.service; then
	# An upgrade of a host installed before the relay existed: the main.cf postmaster
	# renders names the relay's socket, so it must listen as well.
	systemctl enable postmaster-lmtp.socket
fi
# The socket postfix delivers to: listening before postfix reads a main.cf that
# names it. A changed socket unit takes effect when bound again (systemd will not
# restart a socket whose service runs); a new binary or relay unit restarts the
# relay only (the socket keeps listening: deliveries wait, none is refused).
if systemctl --quiet is-enabled postmaster-lmtp.socket; then
	if [ "$lmtp_socket_changed" = yes ] && systemctl --quiet is-active postmaster-lmtp.socket; then
		systemctl stop postmaster-lmtp.service
		systemctl restart postmaster-lmtp.socket
	else
		systemctl start postmaster-lmtp.socket
	fi
	[ "$lmtp_changed" = no ] || systemctl try-restart postmaster-lmtp.service
fi
# The TLS front's ports: free once dovecot runs the dovecot.conf postmaster renders
# (loopback only). The front is enabled only once its socket listens: enabled
# before, it would take the ports at the next boot from a dovecot that still wants
# them, and dovecot would not start at all.
if [ "$enable" = yes ] || systemctl --quiet is-enabled postmaster.service ||
	systemctl --quiet is-enabled postmaster-tls.socket; then
	if [ "$tls_socket_changed" = yes ] && systemctl --quiet is-active postmaster-tls.socket; then
		systemctl stop postmaster-tls.service
		systemctl restart postmaster-tls.socket
	fi
	if systemctl start postmaster-tls.socket; then
		systemctl enable postmaster-tls.socket postmaster-tls.service
		if [ "$tls_changed" = yes ]; then
			systemctl restart postmaster-tls.service
		else
			systemctl start postmaster-tls.service
		fi
	else
		echo "postmaster-tls.socket could not listen on 993, 995, 143, 110 and 4190: is dovecot still" \
			"listening there? Install the dovecot.conf \`postmaster render\` writes, restart dovecot," \
			"then run this again (it enables the front once its ports are free)." >&2
	fi
fi
if systemctl --quiet is-active postmaster.service; then
	[ "$changed" = no ] || systemctl restart postmaster.service
elif [ "$enable" = yes ]; then
	# --no-block: at boot (or from a unit ordered before postfix) waiting would deadlock.
	systemctl start --no-block postmaster.service
fi

if [ "$enable" = no ] && ! systemctl --quiet is-enabled postmaster.service; then
	echo "postmaster is installed, not enabled; start it with: systemctl enable --now postmaster.service postmaster-lmtp.socket postmaster-tls.socket postmaster-tls.service"
fi
