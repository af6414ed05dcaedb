"""`postmaster setup` on a bare Debian 13 host, the way the README tells an admin to
use it (README, "On Debian 13: one command"), checked from outside with the same
mail clients as the other scenarios; then an upgrade, an admin's edit, and
`postmaster uninstall`.

The host is the bed's rootfs booted WITHOUT tests/lib/bed-setup.sh: Debian's
postfix, dovecot and rspamd as their packages left them, nothing of postmaster's.
It has no network to Debian's mirror: setup must find the packages installed
(dpkg-query) and not call apt-get. The steps depend on each other (one host, one
story), so they are one test, each step named in its assertion messages.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
from pathlib import Path

import pytest

import mailclient as mc
import mailhost
from bed import Bed
import pki

NET = "10.231.5"
HOST = "mail.example.org"
PASSWORD = "dora-secret-9"
# What the README's Debian section runs, on the host, as root, from the directory
# the binary was copied to (/bed here).
SETUP = ("./postmaster setup --host mail.example.org --domain example.org --domain example.net "
         "--cert /etc/ssl/mail/fullchain.pem --key /etc/ssl/mail/privkey.pem")


@pytest.fixture(scope="module")
def bare():
    """A booted bare host; its /bed holds the binary and a certificate pair."""
    with tempfile.TemporaryDirectory(prefix="postmaster-setup-") as tmp:
        d = Path(tmp) / "bed"
        d.mkdir()
        shutil.copy2(mailhost.binary(), d / "postmaster")
        ca = pki.TestCA.create(d / "ca")
        chain, key = ca.issue(d / "tls", [HOST])
        chain.rename(d / "tls" / "fullchain.pem")
        key.rename(d / "tls" / "privkey.pem")
        # No setup.sh: postmaster-bed-setup.service is skipped, the host stays bare.
        bed = Bed(bed_input_dir=d, name="pmsetup", net=NET, wait_ports=(25,))
        bed.start()
        try:
            yield bed, d, ca
        finally:
            bed.stop()


def sh(bed: Bed, cmd: str, timeout: float = 180):
    return bed.run(["/bin/sh", "-c", cmd], timeout=timeout)


def ok(bed: Bed, cmd: str, what: str) -> str:
    r = sh(bed, cmd)
    assert r.returncode == 0, f"{what}: `{cmd}` exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def refused(bed: Bed, cmd: str, what: str) -> str:
    r = sh(bed, cmd)
    assert r.returncode == 1, f"{what}: `{cmd}` should refuse (exit 1), exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def test_setup_upgrade_and_uninstall_on_a_bare_debian_13_host(bare):
    bed, d, ca = bare
    server = mc.Server(address=bed.ip, ca_file=str(ca.cert))
    debian_main_cf = bed.path("/etc/postfix/main.cf").read_text()
    debian_dovecot_conf = bed.path("/etc/dovecot/dovecot.conf").read_text()
    assert not bed.path("/usr/local/bin/postmaster").exists(), "the host is not bare"

    # The certificate where an admin's tool keeps it: root's, key 0600.
    ok(bed, "install -d -m 0755 /etc/ssl/mail && install -m 0644 /bed/tls/fullchain.pem /etc/ssl/mail/ "
       "&& install -m 0600 /bed/tls/privkey.pem /etc/ssl/mail/", "placing the certificate")

    # Refusals, each before anything is changed, each saying what to do.
    ok(bed, "systemd-run --unit=squatter python3 -m http.server 465", "a program on port 465")
    bed.wait_port(465)
    out = refused(bed, f"cd /bed && {SETUP}", "port 465 taken")
    assert "port 465 is taken by python3" in out and "systemctl disable --now" in out, out
    ok(bed, "systemctl stop squatter", "stopping the squatter")
    ok(bed, "postconf -e virtual_mailbox_domains=example.com", "an admin's postfix configuration")
    out = refused(bed, f"cd /bed && {SETUP}", "foreign main.cf")
    assert "/etc/postfix/main.cf is not Debian's and not postmaster's: it sets virtual_mailbox_domains" in out, out
    assert "--force" in out, out
    ok(bed, "postconf -X virtual_mailbox_domains", "undoing it")
    assert not bed.path("/etc/postmaster/config.toml").exists(), "a refusal wrote the configuration"
    assert not bed.path("/usr/local/bin/postmaster").exists(), "a refusal installed the binary"

    # The README's command. The daemon cannot read the key yet: setup says what to
    # run; the admin runs it and setup again.
    out = refused(bed, f"cd /bed && {SETUP}", "unreadable key")
    assert "cannot read /etc/ssl/mail/privkey.pem" in out and "chgrp postmaster" in out, out
    ok(bed, "chgrp postmaster /etc/ssl/mail/privkey.pem && chmod g+r /etc/ssl/mail/privkey.pem", "as told")
    out = ok(bed, f"cd /bed && {SETUP}", "setup")
    print(f"---- setup's output\n{out}")
    assert "replaced (original kept): /etc/postfix/main.cf" in out, out
    assert "postmaster setup: done" in out, out
    for unit in ("postfix.service active", "dovecot.service active", "rspamd.service active",
                 "postmaster.service active", "postmaster-lmtp.socket active"):
        assert unit in out, f"report lacks {unit!r}:\n{out}"
    assert "Listening: 25 (" in out and "587 (" in out and "993 (" in out, out
    assert "example.org.\t" in out or "example.org. " in out, f"no DNS records in the report:\n{out}"
    assert "postmaster mailbox add NAME" in out, out
    accounts = bed.path("/etc/postmaster/accounts.toml").read_text()
    assert "postmaster mailbox add thomas" in accounts, accounts

    # Safe to run twice: nothing changes.
    out = ok(bed, "postmaster setup", "second run")
    assert "(0 files changed)" in out, out

    # The first mailbox, as the accounts file's comment says.
    ok(bed, f"echo '{PASSWORD}' | postmaster mailbox add dora", "mailbox add")
    dora = ("dora", PASSWORD)
    mailhost.wait_for_signer(bed)
    for port in (587, 465):
        subject = mc.unique_subject(f"setup host, submitted on {port}")
        mc.submit(server, port, *dora, "dora@example.org", ["dora@example.net"], subject)
        got = mc.imap_find(server, *dora, subject)
        assert got["From"] == "dora@example.org"
    # Delivered through the LMTP relay's socket, which setup enabled (it listens at boot).
    assert bed.run(["systemctl", "is-enabled", "postmaster-lmtp.socket"]).stdout.strip() == "enabled"
    assert bed.is_active("postmaster-lmtp.service"), "the relay did not start with the first delivery"
    code, text = mc.rcpt_reply(server, 25, "starttls", "dora@example.org", "victim@elsewhere.example")
    assert code == 554 and "Relay access denied" in text, (code, text)
    code, text = mc.rcpt_reply(server, 587, "starttls", "dora@example.org", "victim@elsewhere.example")
    assert 500 <= code < 600, ("relay on 587 without AUTH", code, text)
    assert mc.client_speaks("1.1", str(d / "tls" / "fullchain.pem"), str(d / "tls" / "privkey.pem"),
                            server.ca_file), "this client cannot speak TLS 1.1; refusals would prove nothing"
    for port in (25, 587, 465, 993, 995):
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            mc.handshake(server, port, "1.1")
            pytest.fail(f"port {port} completed a TLS 1.1 handshake")
        assert mc.handshake(server, port, "1.2") == "TLSv1.2", port

    # An upgrade: a changed config.toml shows its diff, changes nothing without --yes.
    ok(bed, "printf '\\n[postfix]\\nmessage_size_limit = 10240000\\n' >> /etc/postmaster/config.toml", "editing")
    out = refused(bed, "postmaster setup", "upgrade without --yes")
    print(f"---- the upgrade shown\n{out}")
    assert "-message_size_limit = 67108864\n+message_size_limit = 10240000\n" in out, out
    assert "would update: /etc/postfix/main.cf" in out and "--yes" in out, out
    assert ok(bed, "postconf -h message_size_limit", "postconf").strip() == "67108864"
    out = ok(bed, "postmaster setup --yes", "upgrade with --yes")
    assert "updated: /etc/postfix/main.cf" in out, out
    assert ok(bed, "postconf -h message_size_limit", "postconf").strip() == "10240000"
    # Reloaded: what the running postfix says from outside.
    def size_served():
        with mc.smtp(server, 587, "starttls") as s:
            return s.esmtp_features.get("size") == "10240000"
    mc.wait_for("postfix serving the new SIZE", size_served, timeout=10)

    # An upgrade to a new binary (this one with a byte appended: still the same
    # program, a different file): shown by its hashes, installed with --yes, and the
    # daemon restarted on it.
    ok(bed, "cp /bed/postmaster /root/postmaster && printf x >> /root/postmaster", "a new binary")
    new_sha = ok(bed, "sha256sum /root/postmaster", "sha256sum").split()[0]
    pid_before = bed.main_pid("postmaster.service")
    out = refused(bed, "cd /root && ./postmaster setup", "new binary without --yes")
    assert "/usr/local/bin/postmaster: binary, sha256 " in out and f"-> {new_sha}" in out, out
    assert bed.main_pid("postmaster.service") == pid_before, "restarted without --yes"
    out = ok(bed, "cd /root && ./postmaster setup --yes", "new binary with --yes")
    assert "updated: /usr/local/bin/postmaster" in out, out
    assert ok(bed, "sha256sum /usr/local/bin/postmaster", "sha256sum").split()[0] == new_sha
    bed.wait_active("postmaster.service")
    assert bed.main_pid("postmaster.service") not in (0, pid_before), "the daemon runs the old binary"

    # An admin's edit of an installed file is found and never silently replaced.
    ok(bed, "echo 'smtpd_banner = $myhostname ESMTP mine' >> /etc/postfix/main.cf", "admin's edit")
    edited = bed.path("/etc/postfix/main.cf").read_text()
    out = refused(bed, "postmaster setup --yes", "local change")
    assert "/etc/postfix/main.cf was changed since setup installed it" in out, out
    assert "-smtpd_banner = $myhostname ESMTP mine" in out, out
    assert bed.path("/etc/postfix/main.cf").read_text() == edited, "refused, yet main.cf was changed"
    out = ok(bed, "postmaster setup --yes --force", "--force")
    assert bed.path("/etc/postfix/main.cf.postmaster-local").read_text() == edited
    assert "ESMTP mine" not in bed.path("/etc/postfix/main.cf").read_text()

    # Uninstall: what setup added goes, Debian's files come back, mail stays.
    out = ok(bed, "postmaster uninstall", "uninstall")
    print(f"---- uninstall's output\n{out}")
    assert "mail:" in out and "/var/vmail" in out and "DKIM keys:" in out, out
    assert not bed.path("/usr/local/bin/postmaster").exists()
    assert not bed.path("/usr/local/lib/systemd/system/postmaster.service").exists()
    assert bed.run(["systemctl", "is-active", "postmaster.service"]).stdout.strip() != "active"
    for unit in ("postmaster-lmtp.socket", "postmaster-lmtp.service"):
        assert bed.run(["systemctl", "is-active", unit]).stdout.strip() != "active", unit
        assert not bed.path(f"/usr/local/lib/systemd/system/{unit}").exists(), unit
    assert not bed.path("/var/spool/postfix/private/postmaster-lmtp").exists(), "a dead socket left for postfix"
    assert bed.path("/etc/postfix/main.cf").read_text() == debian_main_cf
    assert bed.path("/etc/dovecot/dovecot.conf").read_text() == debian_dovecot_conf
    assert bed.path("/var/vmail/dora").is_dir(), "uninstall removed mail"
    assert bed.path("/etc/postmaster/accounts.toml").exists(), "uninstall removed the accounts"
    assert bed.is_active("postfix.service"), "postfix does not run on Debian's configuration again"
