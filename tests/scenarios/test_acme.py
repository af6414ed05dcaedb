"""Unattended certificates: the daemon gets its certificate from an ACME CA (pebble,
in the bed, with real http-01 validation through the socket-activated listener on
port 80) and renews it, with postfix and dovecot never restarted.

A bed of its own (the other scenarios use a certificate from files).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest

import mailclient as mc
import mailhost

ACME_NET = "10.231.7"
CERT_PORTS = [25, 465, 587, 993, 995]


@pytest.fixture(scope="module")
def acme_host():
    with tempfile.TemporaryDirectory(prefix="postmaster-acme-") as tmp:
        h = mailhost.prepare_acme(Path(tmp) / "bed", f"{ACME_NET}.2")
        bed = mailhost.boot(h, name="pmacme", net=ACME_NET)
        try:
            yield h
        finally:
            bed.stop()


def status(host) -> dict:
    out = host.bed.run(["postmaster", "status", "--json"])
    assert out.stdout.strip(), f"no status: {out.stderr}\n{host.bed.journal('postmaster.service', lines=40)}"
    return json.loads(out.stdout)


def pebble_root(host) -> str:
    return mailhost.pebble_root(host)


def served(host, root_file: Path) -> dict:
    server = mc.Server(address=host.bed.ip, ca_file=str(root_file))
    return {p: mc.served_fingerprint(server, p) for p in CERT_PORTS}


def wait_obtained(host, previous: str | None = None, timeout=60.0) -> dict:
    return mc.wait_for(
        "a certificate from the ACME CA",
        lambda: (lambda s: s if s["certificate"]["fingerprint"] and s["certificate"]["fingerprint"] != previous
                 and "Pebble" in json.dumps(s["certificate"]) + host.bed.run(
                     ["openssl", "x509", "-noout", "-issuer", "-in", "/var/lib/postmaster/tls/fullchain.pem"]).stdout
                 and s["certificate"]["verified"] and s["certificate"]["verified"]["ok"] else None)(status(host)),
        timeout)


def main_pids(host) -> dict:
    return {u: host.bed.main_pid(u) for u in ("postfix.service", "dovecot.service")}


def test_first_certificate_over_http01_through_the_socket(acme_host, tmp_path):
    s = wait_obtained(acme_host)
    assert s["acme"]["last_attempt"]["ok"], s["acme"]
    assert s["acme"]["failures"] == 0
    root = tmp_path / "root.pem"
    root.write_text(pebble_root(acme_host))
    # Every port serves it, and a client that trusts pebble's root verifies it.
    assert set(served(acme_host, root).values()) == {s["certificate"]["fingerprint"]}
    # The daemon got port 80 from systemd, not by binding it itself.
    assert acme_host.bed.is_active("postmaster-acme.socket")


def test_renewal_is_served_everywhere_without_restarts(acme_host, tmp_path):
    before = status(acme_host)["certificate"]["fingerprint"]
    pids = main_pids(acme_host)
    out = acme_host.bed.run(["postmaster", "renew", "--force"], timeout=120)
    assert out.returncode == 0, out
    s = wait_obtained(acme_host, previous=before)
    root = tmp_path / "root.pem"
    root.write_text(pebble_root(acme_host))
    assert set(served(acme_host, root).values()) == {s["certificate"]["fingerprint"]}
    assert main_pids(acme_host) == pids, "postfix or dovecot was restarted"


def test_the_account_is_reused_after_a_restart(acme_host):
    account = acme_host.bed.run(["cat", "/var/lib/postmaster/acme/account.json"], check=True).stdout
    before = status(acme_host)["certificate"]["fingerprint"]
    acme_host.bed.systemctl("restart", "postmaster.service")
    out = acme_host.bed.run(["postmaster", "renew", "--force"], timeout=120)
    assert out.returncode == 0, out
    wait_obtained(acme_host, previous=before)
    assert acme_host.bed.run(["cat", "/var/lib/postmaster/acme/account.json"], check=True).stdout == account


def test_an_unreachable_ca_keeps_the_certificate_and_says_why(acme_host, tmp_path):
    before = status(acme_host)["certificate"]["fingerprint"]
    acme_host.bed.systemctl("stop", "pebble.service")
    try:
        out = acme_host.bed.run(["postmaster", "renew", "--force"], timeout=120)
        assert out.returncode == 1, out
        s = status(acme_host)
        assert s["acme"]["failures"] >= 1 and not s["acme"]["last_attempt"]["ok"], s["acme"]
        assert "cannot reach the ACME CA" in s["acme"]["last_attempt"]["detail"], s["acme"]
        assert s["certificate"]["fingerprint"] == before
        assert acme_host.bed.run(["postmaster", "status"]).returncode == 1
        # The back-off is in the schedule, which survives restarts.
        schedule = json.loads(acme_host.bed.run(["cat", "/var/lib/postmaster/acme/schedule.json"], check=True).stdout)
        assert schedule["failures"] >= 1 and schedule["next_attempt"] > time.time()
    finally:
        # Started again, pebble has a new root and has forgotten every account.
        acme_host.bed.run(["systemctl", "stop", "pebble-dns.service"])
        acme_host.bed.run(["/usr/local/sbin/bed-pebble"], check=True)
