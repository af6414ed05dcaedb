#!/bin/sh
# Runs inside the bed before postfix and dovecot start (postmaster-bed-setup.service),
# from /bed, which the host filled (tests/lib/mailhost.py): installs postmaster and
# configures the mail host the way the README tells a Debian admin to.
set -eu

# postmaster and its units, users, directories, D-Bus policy and polkit rule, the
# way units/install-debian.sh installs them on any Debian 13 host; the daemon is
# enabled and starts once postfix and dovecot run.
/bed/units/install-debian.sh --enable /bed/postmaster

# The accounts file (password hashes) and the key: for root and the daemon's group.
install -d -m 0755 /etc/postmaster /etc/postmaster/tls
install -m 0644 /bed/config.toml /etc/postmaster/config.toml
install -m 0640 -g postmaster /bed/accounts.toml /etc/postmaster/accounts.toml

# The certificate the way certbot lays it out: live/ symlinks into archive/, where
# each renewal adds numbered files. The daemon reads them through its group.
live=/etc/letsencrypt/live/mail.example.org
archive=/etc/letsencrypt/archive/mail.example.org
install -d -m 0750 -g postmaster /etc/letsencrypt/live /etc/letsencrypt/archive "$live" "$archive"
install -m 0644 /bed/tls/fullchain.pem "$archive/fullchain1.pem"
install -m 0640 -g postmaster /bed/tls/privkey.pem "$archive/privkey1.pem"
ln -sfn ../../archive/mail.example.org/fullchain1.pem "$live/fullchain.pem"
ln -sfn ../../archive/mail.example.org/privkey1.pem "$live/privkey.pem"

# A local ACME CA, when this bed's host gets its certificate over ACME: pebble with
# pebble-challtestsrv as its DNS (every name is 127.0.0.1), so pebble validates
# http-01 against port 80 here, which postmaster-acme.socket hands to the daemon.
if [ -d /bed/pebble ]; then
	install -d /etc/pebble
	install -m 0644 /bed/pebble/config.json /bed/pebble/api.pem /etc/pebble/
	install -m 0600 /bed/pebble/api.key /etc/pebble/
	install -m 0644 /bed/pebble/api-ca.pem /etc/postmaster/pebble-api.pem
	# As transient units, from a script the tests can run again after stopping them.
	cat > /usr/local/sbin/bed-pebble <<'PEBBLE'
#!/bin/sh
systemd-run --unit=pebble-dns --no-block /usr/bin/pebble-challtestsrv -management 127.0.0.1:8055 \
	-dns01 127.0.0.1:8053 -http01 "" -https01 "" -tlsalpn01 "" -defaultIPv4 127.0.0.1 -defaultIPv6 ""
# PEBBLE_AUTHZREUSE=0: pebble reuses a valid authorization for half of all orders
# by default; every order must prove its challenge here.
systemd-run --unit=pebble --no-block -E PEBBLE_VA_NOSLEEP=1 -E PEBBLE_WFE_NONCEREJECT=0 -E PEBBLE_AUTHZREUSE=0 \
	/usr/bin/pebble -config /etc/pebble/config.json -dnsserver 127.0.0.1:8053
PEBBLE
	chmod 0755 /usr/local/sbin/bed-pebble
	/usr/local/sbin/bed-pebble
	systemctl enable postmaster-acme.socket
	systemctl start --no-block postmaster-acme.socket
fi

# The whole mail host's configuration, rendered from postmaster's.
postmaster check
out=$(mktemp -d)
postmaster render --out "$out" >/dev/null
install -m 0644 "$out/postfix/main.cf" /etc/postfix/main.cf
install -m 0644 "$out/postfix/master.cf" /etc/postfix/master.cf
install -m 0644 "$out/dovecot/dovecot.conf" /etc/dovecot/dovecot.conf
# dovecot's Sieve scripts (Junk filing, learning), compiled here: dovecot runs them
# as the mail user, who cannot write the compiled files next to them. The programs
# the learning scripts pipe messages to, executable.
# (The learning ones only with [inbound] learning, as `postmaster render` writes them.)
install -d -m 0755 /etc/dovecot/sieve
install -m 0644 "$out"/dovecot/sieve/*.sieve /etc/dovecot/sieve/
if [ -d "$out/dovecot/sieve-pipe" ]; then
	install -d -m 0755 /etc/dovecot/sieve-pipe
	install -m 0755 "$out"/dovecot/sieve-pipe/* /etc/dovecot/sieve-pipe/
fi
for script in /etc/dovecot/sieve/*.sieve; do sievec "$script"; done
# The directory of rspamd's controller socket (learning), for rspamd and group vmail.
install -m 0644 "$out/tmpfiles.d/postmaster-learning.conf" /etc/tmpfiles.d/
systemd-tmpfiles --create /etc/tmpfiles.d/postmaster-learning.conf
# rspamd signs submitted mail (DKIM) with the keys postmaster keeps; it reads the
# table of keys from postmaster's generated directory when it (re)starts. It also
# checks what arrives on port 25 (actions, DMARC, Authentication-Results, the
# hosted-domain forgery rule). (This script runs before rspamd starts:
# provision.sh orders it so.)
install -d -m 0755 /etc/rspamd/local.d
install -m 0644 "$out"/rspamd/local.d/* /etc/rspamd/local.d/
# The bed only: the tests change a domain's SPF record from one test to the next
# (TTL 1 s); rspamd would keep an SPF record for at least 5 minutes.
printf '%s\n' '# The test bed (tests/lib/bed-setup.sh): SPF records as long as their TTL.' \
	'min_cache_ttl = 1s;' > /etc/rspamd/local.d/spf.conf
# The bed only: a message whose Subject carries BED-PROBABLE-SPAM scores 10, between
# add_header_score (6) and reject_score (15): probable spam, reliably, for the tests
# of Junk filing (tests/scenarios/test_junk.py). rspamd runs this file if it exists.
# And mail from the test runner itself (the bed network's .1: mailclient.py's
# send_inbound, as "someone@elsewhere.example" from a host with no DNS at all) would
# score about 8 (no reverse name, unresolvable HELO and sender domain) and be filed
# into Junk; the tests that send it check routing, not scoring: it gets -6.
cat > /etc/rspamd/rspamd.local.lua <<'LUA'
rspamd_config.BED_TEST_RUNNER = {
  callback = function(task)
    local ip = task:get_from_ip()
    return ip ~= nil and ip:is_valid() and ip:to_string():match('^10%.231%.%d+%.1$') ~= nil
  end,
  score = -6.0,
  description = 'test bed: mail from the test runner on the bed network',
}
rspamd_config.BED_PROBABLE_SPAM = {
  callback = function(task)
    local subject = task:get_subject()
    return subject ~= nil and subject:find('BED-PROBABLE-SPAM', 1, true) ~= nil
  end,
  score = 10.0,
  description = 'test bed: marked to score as probable spam',
}
LUA
install -d -m 0755 /etc/rspamd/override.d
install -m 0644 "$out"/rspamd/override.d/* /etc/rspamd/override.d/
# The bed only: rspamd counts what Bayes learned (`rspamc stat`) every
# monitor_timeout, 30 s by default; the tests of learning read those counts.
printf '%s\n' '# The test bed (tests/lib/bed-setup.sh): Bayes learn counts every second.' \
	'monitor_timeout = 1s;' > /etc/rspamd/override.d/classifier-bayes.conf
# The inbound checks' own resolver ([inbound] resolver = "local", the default):
# unbound on loopback with postmaster's drop-in, which rspamd asks
# (rspamd/local.d/options.inc). Debian's package gives it the root trust anchor.
if [ -f "$out/unbound/unbound.conf.d/postmaster.conf" ]; then
	install -m 0644 "$out/unbound/unbound.conf.d/postmaster.conf" /etc/unbound/unbound.conf.d/
	# The bed only: its zones are the outside world's Knot DNS (the resolver
	# /etc/resolv.conf names, tests/lib/world.py), unsigned, so unbound asks it
	# directly and does not validate them; every other name is answered "no such
	# name" here, so unbound never sends a question out of the bed. The tests read
	# its log of questions to see what rspamd asked.
	world=$(awk '$1 == "nameserver" { print $2; exit }' /etc/resolv.conf)
	reverse=$(echo "$world" | awk -F. '{ print $3 "." $2 "." $1 ".in-addr.arpa" }')
	{
		echo '# The test bed only (tests/lib/bed-setup.sh): the bed'"'"'s own zones, unsigned.'
		echo 'server:'
		echo '    log-queries: yes'
		echo '    local-zone: "." static'
		for zone in example.org example.net example.com "$reverse"; do
			echo "    local-zone: \"$zone.\" transparent"
			echo "    domain-insecure: \"$zone\""
		done
		for zone in example.org example.net example.com "$reverse"; do
			printf 'stub-zone:\n    name: "%s"\n    stub-addr: %s\n' "$zone" "$world"
		done
	} >/etc/unbound/unbound.conf.d/bed.conf
	# Disabled in the rootfs; this script runs before it (provision.sh).
	systemctl start --no-block unbound.service
fi
rm -rf "$out"
# Bayes's store for learning ([inbound] learning, on by default): valkey, as Debian
# configures it (127.0.0.1 only). Started without waiting: this script runs before it.
if grep -q '^servers' /etc/rspamd/local.d/classifier-bayes.conf; then
	systemctl enable valkey-server.service
	systemctl start --no-block valkey-server.service
fi

# dovecot puts its LMTP and auth sockets into postfix's private spool directory,
# which postfix creates at its first start; this rootfs never started it yet.
postfix check

# The generated maps, the passwd-file and the installed certificate, so postfix
# and dovecot find them when they start; made by the daemon's user, which keeps
# them up to date from then on.
setpriv --reuid=postmaster --regid=postmaster --init-groups postmaster apply
