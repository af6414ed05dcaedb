#!/bin/sh
# Runs inside the bed before postfix and dovecot start (postmaster-bed-setup.service),
# from /bed, which the host filled (tests/lib/mailhost.py): puts in place what an
# admin has before running `postmaster setup`. The setup itself is the README's
# command, run by mailhost.boot once the bed is up (SETUP there).
set -eu

# What an admin has in place before running `postmaster setup` (which the host
# runs once the bed is up, the way the README says: mailhost.boot): the
# configuration and accounts, and a certificate kept by another tool. The group
# postmaster exists in the bed's rootfs (provision.sh); setup keeps it.
install -d -m 0755 /etc/postmaster
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
fi

# The bed only: the tests change a domain's SPF record from one test to the next
# (TTL 1 s); rspamd would keep an SPF record for at least 5 minutes. A file setup
# does not install, so it stays as it is.
install -d -m 0755 /etc/rspamd/local.d
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
# The bed only: rspamd counts what Bayes learned (`rspamc stat`) every
# monitor_timeout, 30 s by default; the tests of learning read those counts.
install -d -m 0755 /etc/rspamd/override.d
printf '%s\n' '# The test bed (tests/lib/bed-setup.sh): Bayes learn counts every second.' \
	'monitor_timeout = 1s;' > /etc/rspamd/override.d/classifier-bayes.conf
# The bed only: the checks' own resolver (unbound, which `postmaster setup` installs
# and starts with postmaster's drop-in) asks the bed's zones from the outside
# world's Knot DNS (the resolver /etc/resolv.conf names, tests/lib/world.py):
# unsigned, so they are declared insecure; every other name is answered "no such
# name" here, so unbound never sends a question out of the bed. The tests read its
# log of questions to see what rspamd asked.
world=$(awk '$1 == "nameserver" { print $2; exit }' /etc/resolv.conf)
reverse=$(echo "$world" | awk -F. '{ print $3 "." $2 "." $1 ".in-addr.arpa" }')
install -d -m 0755 /etc/unbound/unbound.conf.d
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
