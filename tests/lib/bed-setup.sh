#!/bin/sh
# Runs inside the bed before postfix and dovecot start (postmaster-bed-setup.service),
# from /bed, which the host filled (tests/lib/mailhost.py): installs postmaster and
# configures the mail host the way the README tells a Debian admin to.
set -eu

install -m 0755 /bed/postmaster /usr/local/bin/postmaster

install -d -m 0755 /etc/postmaster /etc/postmaster/tls
install -m 0644 /bed/config.toml /etc/postmaster/config.toml
install -m 0644 /bed/accounts.toml /etc/postmaster/accounts.toml
install -m 0644 /bed/tls/fullchain.pem /etc/postmaster/tls/fullchain.pem
install -m 0600 /bed/tls/privkey.pem /etc/postmaster/tls/privkey.pem

# The whole mail host's configuration, rendered from postmaster's.
postmaster check
out=$(mktemp -d)
postmaster render --out "$out" >/dev/null
install -m 0644 "$out/postfix/main.cf" /etc/postfix/main.cf
install -m 0644 "$out/postfix/master.cf" /etc/postfix/master.cf
install -m 0644 "$out/dovecot/dovecot.conf" /etc/dovecot/dovecot.conf
rm -rf "$out"

# dovecot puts its LMTP and auth sockets into postfix's private spool directory,
# which postfix creates at its first start; this rootfs never started it yet.
postfix check

# The generated maps and passwd-file.
postmaster apply
