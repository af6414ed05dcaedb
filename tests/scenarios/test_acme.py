"""Unattended certificates: the daemon gets its certificate from an ACME CA (pebble,
in the bed, with real http-01 validation through the socket-activated listener on
port 80) and renews it, with postfix and dovecot never restarted.

A bed of its own (the other scenarios use a certificate from files).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
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


def at(rfc3339: str) -> datetime:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))


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
    # The order named the certificate it replaces (RFC 9773 section 5).
    assert "is a replacement of" in acme_host.bed.journal("pebble.service"), acme_host.bed.journal("pebble.service", lines=30)


def test_the_renewal_is_planned_inside_the_cas_renewal_window(acme_host):
    # pebble offers ACME Renewal Information (RFC 9773): a window around two thirds
    # of the lifetime, +-1 day. The plan is a point inside it.
    a = status(acme_host)["acme"]
    assert a["renewal_window"], a
    start, end = (at(t) for t in a["renewal_window"])
    assert start < end and start <= at(a["next_attempt"]) <= end, a


def test_a_revoked_certificate_is_renewed_when_the_ca_says_so(acme_host, tmp_path):
    s = status(acme_host)
    before, planned = s["certificate"]["fingerprint"], s["acme"]["next_attempt"]
    out = acme_host.bed.run(["postmaster", "renew"], timeout=120)
    assert out.returncode == 0 and "not due" in out.stdout, out
    # Revoked (with the certificate's own key, as after a key compromise), the CA's
    # renewal window moves into the past: renew now.
    revoke = acme_host.bed.run(
        ["certbot", "revoke", "--non-interactive", "--no-delete-after-revoke",
         "--server", "https://127.0.0.1:14000/dir",
         "--cert-path", "/var/lib/postmaster/tls/fullchain.pem", "--key-path", "/var/lib/postmaster/tls/privkey.pem",
         "--config-dir", "/tmp/certbot", "--work-dir", "/tmp/certbot/work", "--logs-dir", "/tmp/certbot/logs"],
        env={"REQUESTS_CA_BUNDLE": "/etc/postmaster/pebble-api.pem"}, timeout=120)
    assert revoke.returncode == 0, revoke
    # `postmaster renew` without --force asks the CA first, and the CA says: now.
    out = acme_host.bed.run(["postmaster", "renew"], timeout=120)
    assert out.returncode == 0 and "obtained a certificate" in out.stdout, (out, planned)
    s = wait_obtained(acme_host, previous=before)
    assert "suggests another renewal window" in acme_host.bed.journal("postmaster.service")
    root = tmp_path / "root.pem"
    root.write_text(pebble_root(acme_host))
    assert set(served(acme_host, root).values()) == {s["certificate"]["fingerprint"]}
    # The new certificate has a window of its own, in the future again.
    start, end = (at(t) for t in s["acme"]["renewal_window"])
    assert start <= at(s["acme"]["next_attempt"]) <= end and start > datetime.now(start.tzinfo), s["acme"]


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


def test_once_the_ca_is_back_the_next_retry_renews(acme_host, tmp_path):
    # Nobody asks: the back-off's next attempt (a minute after the failure above)
    # finds the CA back. It has forgotten the account, so postmaster registers anew.
    s = status(acme_host)
    assert s["acme"]["failures"] >= 1, s["acme"]
    s = wait_obtained(acme_host, previous=s["certificate"]["fingerprint"], timeout=150)
    assert s["acme"]["failures"] == 0 and s["acme"]["last_attempt"]["ok"], s["acme"]
    assert "no longer knows the stored account" in acme_host.bed.journal("postmaster.service")
    root = tmp_path / "root.pem"
    root.write_text(pebble_root(acme_host))
    assert set(served(acme_host, root).values()) == {s["certificate"]["fingerprint"]}


# An attacker on port 80: holds N connections, each with half a request line sent,
# and reopens those the daemon closes (every 0.2 s). Prints what it holds (after
# reopening) and how many it opened in all, each second.
FLOODER = r"""
import select, socket, sys, time
host, n = sys.argv[1], int(sys.argv[2])
def open_one():
    try:
        s = socket.create_connection((host, 80), timeout=2)
        s.sendall(b"GET /.well-known/acme-chall")
        s.setblocking(False)
        return s
    except OSError:
        return None
held, reopened, printed = [], 0, 0.0
while True:
    held = [s for s in held if s is not None]
    while len(held) < n:
        s = open_one()
        if s is None:
            break
        held.append(s)
        reopened += 1
    if time.monotonic() - printed >= 1:
        printed = time.monotonic()
        print(f"held={len(held)} opened={reopened}", flush=True)
    readable, _, _ = select.select(held, [], [], 0.2)
    for s in readable:  # closed by the daemon (EOF or reset): drop it, reopen next round
        try:
            if s.recv(1024):
                continue
        except OSError:
            pass
        s.close()
        held.remove(s)
"""
FLOOD_EACH = 300


def daemon_memory(bed, pid: int) -> dict:
    """VmRSS and VmHWM of `pid` in the bed, in KiB."""
    text = bed.run(["cat", f"/proc/{pid}/status"], check=True).stdout
    return {k: int(v) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}


def daemon_cpu_seconds(bed, pid: int) -> float:
    """User + system CPU time of `pid` in the bed so far."""
    fields = bed.run(["cat", f"/proc/{pid}/stat"], check=True).stdout.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def port80_connections(bed) -> int:
    """Established connections on port 80, daemon's side (accepted or queued)."""
    out = bed.run(["ss", "-Htn", "state", "established", "( sport = :80 )"]).stdout
    return len(out.splitlines())


def test_a_flood_of_idle_connections_on_port_80_does_not_keep_the_ca_out(acme_host, tmp_path):
    # FLOOD_EACH connections from inside the bed to 127.0.0.1:80 (the address pebble
    # validates from and on), as many from the test host to the bed's address: more
    # than the daemon keeps (512), each half a request, reopened when closed.
    b = acme_host.bed
    before = wait_obtained(acme_host)["certificate"]["fingerprint"]
    pid = b.main_pid("postmaster.service")
    restarts = b.systemctl("show", "-p", "NRestarts", "--value", "postmaster.service").strip()
    t0 = time.monotonic()
    quiet = b.run(["postmaster", "renew", "--force"], timeout=120)
    quiet_took = time.monotonic() - t0
    assert quiet.returncode == 0, quiet
    before = wait_obtained(acme_host, previous=before)["certificate"]["fingerprint"]
    mem_before = daemon_memory(b, pid)
    cpu_before, flood_started = daemon_cpu_seconds(b, pid), time.monotonic()

    b.run(["systemd-run", "--unit=flood80", "python3", "-c", FLOODER, "127.0.0.1", str(FLOOD_EACH)], check=True)
    outside_log = tmp_path / "outside.log"
    with open(outside_log, "w") as log:
        outside = subprocess.Popen([sys.executable, "-c", FLOODER, b.ip, str(FLOOD_EACH)], stdout=log)
    samples: list[tuple[int, int]] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((port80_connections(b), daemon_memory(b, pid)["VmRSS"]))
            stop.wait(0.2)

    try:
        held = mc.wait_for("the flood on port 80", lambda: (n := port80_connections(b)) >= 400 and n, timeout=30)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # Past the 5 s head deadline: the daemon closes the first wave, the flooders
        # reopen, as an attacker who keeps at it would.
        time.sleep(7)
        t0 = time.monotonic()
        out = b.run(["postmaster", "renew", "--force"], timeout=120)
        took = time.monotonic() - t0
        assert out.returncode == 0, (out, b.journal("postmaster.service", lines=30))
        stop.set()
        sampler.join()
        mem_during = daemon_memory(b, pid)
        cpu = daemon_cpu_seconds(b, pid) - cpu_before
        flood_lasted = time.monotonic() - flood_started
        inside = [line.split(": ")[-1] for line in b.journal("flood80.service").splitlines() if "held=" in line]
        assert outside.poll() is None, outside_log.read_text()
    finally:
        stop.set()
        outside.terminate()
        outside.wait(timeout=10)
        b.run(["systemctl", "stop", "flood80.service"])
    s = wait_obtained(acme_host, previous=before)
    root = tmp_path / "root.pem"
    root.write_text(pebble_root(acme_host))
    assert set(served(acme_host, root).values()) == {s["certificate"]["fingerprint"]}
    # The flood was there and bigger than the daemon's limit: it closed idle ones.
    assert "holds its limit of connections" in b.journal("postmaster.service")
    # The daemon neither restarted nor grew without bound.
    assert (b.main_pid("postmaster.service"), restarts) == (
        pid, b.systemctl("show", "-p", "NRestarts", "--value", "postmaster.service").strip())
    time.sleep(6)  # the flood's last connections reach their deadline
    mem_after = daemon_memory(b, pid)
    rss_peak = max(r for _, r in samples)
    opened = sum(int(log[-1].split("opened=")[1]) for log in (inside, outside_log.read_text().splitlines()))
    figures = {
        "connections on :80 (daemon's side)": f"{held} when the flood was up, "
        f"{min(n for n, _ in samples)}..{max(n for n, _ in samples)} from then until the renewal ended",
        "flooders (last line)": f"inside {inside[-1] if inside else '?'}, "
        f"outside {outside_log.read_text().splitlines()[-1]}",
        "renew --force": f"{took:.2f} s during the flood, {quiet_took:.2f} s before it",
        "daemon VmRSS KiB": f"before {mem_before['VmRSS']}, during max {rss_peak} "
        f"(HWM {mem_during['VmHWM']}), after {mem_after['VmRSS']}",
        "connections the flooders opened in all": opened,
        "daemon CPU during the flood": f"{cpu:.2f} s in {flood_lasted:.1f} s",
        "port 80 now": port80_connections(b),
    }
    print("\nflood figures:", json.dumps(figures, indent=1))
    assert took < 30, figures
    # The flood went on past the daemon's deadlines: the flooders had to reopen.
    assert opened > 2 * FLOOD_EACH + 100, figures
    # 512 connections at ~10 KiB each while reading a head: 5 MiB; 16 MiB is the bound.
    assert rss_peak - mem_before["VmRSS"] < 16 * 1024, figures


def test_issuance_through_a_webroot_another_web_server_serves(acme_host, tmp_path):
    # The seed's host also runs a personal web server: it owns port 80 and serves a
    # directory; postmaster writes the http-01 answers into it.
    b = acme_host.bed
    before = status(acme_host)["certificate"]["fingerprint"]
    config = b.run(["cat", "/etc/postmaster/config.toml"], check=True).stdout
    setup = """
        set -e
        install -d -o postmaster -g postmaster -m 0755 /var/www/mail
        # ProtectSystem=strict: the unit may write there only with a drop-in (README).
        install -d /etc/systemd/system/postmaster.service.d
        printf '[Service]\\nReadWritePaths=/var/www/mail\\n' > /etc/systemd/system/postmaster.service.d/webroot.conf
        systemctl daemon-reload
        # The web server takes port 80: postmaster must give it up.
        systemctl stop postmaster.service postmaster-acme.socket
        systemctl start postmaster.service
        systemd-run --unit=webserver python3 -m http.server 80 --bind 0.0.0.0 --directory /var/www/mail
        # The switch to the webroot takes effect on a reload, without a restart.
        sed -i 's|^\\[acme\\]$|[acme]\\nchallenge = "webroot"\\nwebroot = "/var/www/mail"|' /etc/postmaster/config.toml
    """
    try:
        b.run(["sh", "-c", setup], check=True)
        pid = b.main_pid("postmaster.service")
        reload = b.run(["systemctl", "reload", "postmaster.service"])
        assert reload.returncode == 0 and b.main_pid("postmaster.service") == pid, reload
        mc.wait_for("the web server on port 80", lambda: ":80 " in b.run(["ss", "-Hltn", "sport = :80"]).stdout)
        out = b.run(["postmaster", "renew", "--force"], timeout=120)
        assert out.returncode == 0, (out, b.journal("postmaster.service", lines=20))
        s = wait_obtained(acme_host, previous=before)
        # pebble fetched the answer from the web server, not from postmaster.
        served_by_web = b.journal("webserver.service")
        assert "GET /.well-known/acme-challenge/" in served_by_web and '" 200 ' in served_by_web, served_by_web
        assert b.run(["sh", "-c", "ls -A /var/www/mail/.well-known/acme-challenge"]).stdout.strip() == "", \
            "the answers were not withdrawn"
        root = tmp_path / "root.pem"
        root.write_text(pebble_root(acme_host))
        assert set(served(acme_host, root).values()) == {s["certificate"]["fingerprint"]}
    finally:
        b.run(["systemctl", "stop", "webserver.service"])
        b.run(["sh", "-c", "cat > /etc/postmaster/config.toml"], input=config, check=True)
        # systemd refuses to start a socket whose service runs: stop it first.
        back = b.run(["sh", "-c", "rm -r /etc/systemd/system/postmaster.service.d && systemctl daemon-reload"
                      " && systemctl stop postmaster.service && systemctl start postmaster-acme.socket"
                      " && systemctl start postmaster.service"])
        assert back.returncode == 0, (back, b.journal(lines=40))
