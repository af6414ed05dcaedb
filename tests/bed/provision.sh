#!/bin/sh
# Provision the test-bed rootfs. Runs once, inside `chroot ROOTFS`, right after
# debootstrap (see rootfs.sh); the result is cached, so everything here is baked in
# and the same for every boot. Per-boot configuration belongs in /bed/setup.sh.
# Part of the rootfs cache key: any edit here rebuilds the rootfs.
set -eu

hostname=mail.example.org

# --- Name resolution: never anything but loopback --------------------------------
# debootstrap copied the build host's resolv.conf in. The container must never send a
# query anywhere but its own loopback, where nothing listens, so lookups fail fast.
rm -f /etc/resolv.conf
echo 'nameserver 127.0.0.1' >/etc/resolv.conf

echo "$hostname" >/etc/hostname
echo "$hostname" >/etc/mailname
cat >/etc/hosts <<EOF
127.0.0.1	localhost
127.0.1.1	$hostname mail
::1	localhost ip6-localhost ip6-loopback
EOF

# An empty machine-id makes systemd generate a transient one at every boot (and not
# run the first-boot machinery a missing file would trigger).
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id

# ssl-cert made its snakeoil pair for the build host's name. postfix's and dovecot's
# default configs point at it; give it this host's name (same pair in every bed, and
# only ever a placeholder: scenarios install their own certificates).
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$hostname" \
	-addext "subjectAltName=DNS:$hostname" \
	-keyout /etc/ssl/private/ssl-cert-snakeoil.key \
	-out /etc/ssl/certs/ssl-cert-snakeoil.pem 2>/dev/null
chown root:ssl-cert /etc/ssl/private/ssl-cert-snakeoil.key
chmod 0640 /etc/ssl/private/ssl-cert-snakeoil.key

# --- Users -----------------------------------------------------------------------
# vmail owns the virtual mailboxes (uid/gid 5000, as the seed guide creates it).
groupadd --gid 5000 vmail
useradd --uid 5000 --gid vmail --home-dir /var/vmail --no-create-home \
	--shell /usr/sbin/nologin --comment 'virtual mail' vmail
install -d -o vmail -g vmail -m 0770 /var/vmail
# The supervisor's own account; its unit (shipped by the project) decides the rest.
useradd --system --user-group --home-dir /nonexistent --no-create-home \
	--shell /usr/sbin/nologin --comment 'postmaster supervisor' postmaster

# --- Postfix defaults --------------------------------------------------------------
# postfix's postinst took myhostname from the *build host*; make the defaults name
# this host so a bed without setup.sh still delivers locally instead of relaying.
postconf -e "myhostname = $hostname" \
	'mydestination = $myhostname, localhost.localdomain, localhost' \
	'relayhost =' 'inet_interfaces = all'

# --- Services ----------------------------------------------------------------------
# Nothing may try to reach out of the bed: no apt refreshes or upgrades, and
# certbot's packaged renewal timer would contact the real Let's Encrypt. The other
# timers only add noise to a bed that lives for seconds. Masked, not disabled, so a
# package trigger cannot re-enable them. (One systemctl call per verb: each call in
# a chroot without /proc prints a warning.)
systemctl mask apt-daily.timer apt-daily-upgrade.timer apt-daily.service \
	apt-daily-upgrade.service certbot.timer certbot.service dpkg-db-backup.timer \
	fstrim.timer

# --- Network: host0 gets a static address, nothing else --------------------------
# No DHCP and deliberately no default route: the only reachable peers are loopback
# and the bed's own /24 (the host, and the other beds on the same bridge). Bed passes
# the address as the system credential pmbed.addr (nspawn --set-credential), so two
# beds can use different subnets, and the resolver as pmbed.dns: a bed of the
# outside world (tests/lib/world.py) asks its DNS server, on that same /24. It is
# written here, at sysinit, so it is in place before any service starts.
install -d /usr/local/sbin
cat >/usr/local/sbin/postmaster-bed-net <<'EOF'
#!/bin/sh
set -eu
addr=10.231.0.2/24
creds="${CREDENTIALS_DIRECTORY:-/nonexistent}"
if [ -r "$creds/pmbed.addr" ]; then addr=$(cat "$creds/pmbed.addr"); fi
if [ -r "$creds/pmbed.dns" ]; then
	echo "nameserver $(cat "$creds/pmbed.dns")" >/etc/resolv.conf.new
	mv /etc/resolv.conf.new /etc/resolv.conf
fi
ip link set lo up
ip link set host0 up
ip addr replace "$addr" dev host0
EOF
chmod 0755 /usr/local/sbin/postmaster-bed-net

cat >/etc/systemd/system/postmaster-bed-net.service <<'EOF'
[Unit]
Description=postmaster test bed: static address on host0
DefaultDependencies=no
ConditionPathExists=/sys/class/net/host0
Wants=network-pre.target
Before=network-pre.target network.target shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ImportCredential=pmbed.*
ExecStart=/usr/local/sbin/postmaster-bed-net

[Install]
WantedBy=sysinit.target
EOF

# --- Per-boot setup hook -----------------------------------------------------------
# /bed is a read-only bind mount chosen per boot by Bed(bed_input_dir=...). setup.sh
# writes the configuration a scenario needs before postfix, dovecot, rspamd, valkey,
# unbound and knot start. It must
# be executable (its shebang picks the interpreter); it runs with /bed as cwd.
cat >/etc/systemd/system/postmaster-bed-setup.service <<'EOF'
[Unit]
Description=postmaster test bed: per-boot setup from /bed/setup.sh
ConditionPathExists=/bed/setup.sh
After=postmaster-bed-net.service
Before=postfix.service postfix@-.service dovecot.service rspamd.service
Before=valkey-server.service unbound.service knot.service

[Service]
Type=oneshot
RemainAfterExit=yes
WorkingDirectory=/bed
ExecStart=/bed/setup.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=300

[Install]
WantedBy=multi-user.target
EOF

systemctl enable postfix.service dovecot.service postmaster-bed-net.service \
	postmaster-bed-setup.service
# rspamd stays enabled: it is the mail host's DKIM signer (the outside world's host
# masks it on its kernel command line). valkey, unbound and knot start only where a
# /bed/setup.sh asks for them (the mail host's inbound checks, the world's DNS).
systemctl disable valkey-server.service unbound.service knot.service

# --- Slimming ----------------------------------------------------------------------
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/*.log /var/log/apt/*
