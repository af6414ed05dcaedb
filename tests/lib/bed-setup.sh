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
