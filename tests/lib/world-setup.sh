#!/bin/sh
# Runs inside the outside world's host (tests/lib/world.py) before postfix and knot
# start (postmaster-bed-setup.service), from /bed, which world.py filled: knot.conf
# and zones/*.zone. Makes this host mx.example.com: the bed's authoritative DNS, and
# a postfix that receives mail for example.com and checks SPF on the way in.
# rspamd and dovecot are masked on this host's kernel command line (world.py).
set -eu

name=mx.example.com
echo "$name" >/etc/hostname
hostname "$name"
echo example.com >/etc/mailname
cat >/etc/hosts <<EOF
127.0.0.1	localhost
127.0.1.1	$name mx
::1	localhost ip6-localhost ip6-loopback
EOF

# --- DNS: knot, authoritative for the bed's zones ----------------------------------
# The zone files stay root's: the tests replace them (World.publish), knot only reads.
install -m 0644 /bed/knot.conf /etc/knot/knot.conf
install -d -m 0755 /var/lib/knot/bed
install -m 0644 /bed/zones/*.zone /var/lib/knot/bed/
# knot is disabled in the rootfs; this unit is ordered before it, so it starts
# once this script is done.
systemctl start --no-block knot.service

# --- Mail: postfix for example.com, delivering to ~/Maildir ------------------------
useradd --create-home --shell /usr/sbin/nologin --comment 'the outside world' someone

# SPF: policyd-spf only adds its verdict (Received-SPF); it must never reject, or a
# test could not see a Fail arrive. The HELO name is not checked, so each message
# gets exactly one header, for the envelope sender (for <> pyspf uses the HELO name).
cat >/etc/postfix-policyd-spf-python/policyd-spf.conf <<'EOF'
debugLevel = 1
TestOnly = 1
HELO_reject = No_Check
Mail_From_reject = False
PermError_reject = False
TempError_Defer = False
skip_addresses = 127.0.0.0/8,::ffff:127.0.0.0/104,::1
EOF

# Only loopback is "our network": the mail host is a stranger here and gets the
# checks any sender gets.
postconf -e "myhostname = $name" 'mydomain = example.com' 'myorigin = $mydomain' \
	'mydestination = $myhostname, $mydomain, localhost' \
	'mynetworks = 127.0.0.0/8 [::1]/128' 'relayhost =' 'inet_interfaces = all' \
	'home_mailbox = Maildir/' 'biff = no' \
	'smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination, check_policy_service unix:private/policyd-spf' \
	'policyd-spf_time_limit = 3600'
postconf -M 'policyd-spf/unix=policyd-spf unix - n n - 0 spawn user=policyd-spf argv=/usr/bin/policyd-spf'
newaliases
postfix check
