#!/usr/bin/env bash
# Installs what the tests need on a Debian host, from Debian's own packages.
# Idempotent: a second run installs nothing. Never starts the services it installs.
set -euo pipefail

packages=(
  # the real tools the integration tests check generated output with
  postfix postfix-lmdb dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd openssl
  # dovecot.conf names Sieve's settings and ManageSieve's service
  dovecot-sieve dovecot-managesieved
  # the ACME client's tests run against a real pebble on loopback
  pebble
  # the test bed: a rootfs, booted with systemd-nspawn
  debootstrap systemd-container zstd iproute2 util-linux
  # the scenario tests: real mail clients
  python3 python3-pytest swaks
  # swaks --tls (the demo's "Try:" command) needs it; swaks only recommends it,
  # and this installs without recommends
  libnet-ssleay-perl
  # the TLS profile's judge (tests/scenarios/test_tls_profile.py)
  testssl.sh
  # ./bench's scale part: a command's own peak RSS (GNU time's %M)
  time
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "host packages: all present"
  exit 0
fi

echo "host packages: installing ${missing[*]}"
# Installing postfix or dovecot must not start them on this host: the tests run
# them only inside the bed. A policy-rc.d that forbids starts does that; ours is
# removed again unless one was there before.
own_policy=no
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  own_policy=yes
fi
trap '[ "$own_policy" = yes ] && rm -f /usr/sbin/policy-rc.d' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
