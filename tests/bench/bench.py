"""postmaster's benchmark: how fast the daemon brings an edit to clients, what it costs
when nothing happens, and how long it takes to obtain a certificate over ACME beside
certbot and lego. It prints figures and is not a test: it exits 0 whatever
the figures are, and non-zero only when the benchmark itself could not run.

For the parts 1-3 it boots the seed's mail host in the test bed (tests/lib/mailhost.py,
machine "pmbench" on 10.231.6.0/24; the daemon runs as postmaster.service under its
real unit), makes everything the trials need beforehand (password hashes,
certificates: not measured), and measures from the host, as a client would see it.
Part 4 ("issuance") boots a bed of its own with an ACME CA in it, and only when it
is selected (the other bed is not booted when it is the only part):

1. accounts edit -> new login succeeds ("accounts", then "busy"). Each trial adds a
   new mailbox by rewriting /etc/postmaster/accounts.toml atomically (the new text
   staged inside the bed under another name, then renamed over the file) and takes
   the time from just before the rename until an IMAPS LOGIN as the new user is
   answered OK on a connection opened from outside (connect + TLS + LOGIN included).

   dovecot answers every failed login only after 2 s (auth_failure_delay) and
   penalises the client address on top (its next logins wait 2 s, 4 s, ...), so
   retrying logins until one works would measure dovecot's penalty, not the apply.
   So: the host reads the passwd-file dovecot reads (through the bed's root: a
   plain file read, nothing runs in the bed) every 5 ms until the new user is in it
   (no login can work before), then logs in. Every login comes from a source
   address of its own (NET.10-NET.250, added to the host side of the bed's veth for
   the run): an address whose login failed is not used again (or, in the busy
   series, only after a successful login, which clears its penalty); one whose login
   worked goes back to the pool. If a login fails after all, another starts from a
   fresh address every 50 ms until one works; failures are counted and shown.

   dovecot looks at the passwd-file at most once per wall-clock second, and only
   when a login asks. "accounts" (idle server): each rename comes 1.1 s or more
   after the previous trial's last login, so its first login is in a later
   wall-clock second and always makes dovecot look at the file again.
   "busy" (busy server): thomas logs in every 100 ms meanwhile, as users would, so
   a new user can log in only once the next second has begun: up to 1 s more,
   which is dovecot's, not the daemon's. The renames of this series are spread
   evenly over the wall-clock second, so that this wait is sampled fairly.

   After the idle series, 10 of its users log in once more, with no edit, timed
   the same way (connect + TLS + LOGIN, each from a fresh address): the floor, what
   this client and dovecot take, which no daemon can take off a trial's figure.

2. certificate replaced -> new certificate served on 993 and 587. Each trial
   writes a new pair into archive/ and replaces the live/ symlinks the way certbot
   does (a symlink under a temporary name renamed over privkey.pem, then over
   fullchain.pem). From just before the first rename, a TLS handshake starts on each
   port every 20 ms (IMAPS on 993, SMTP STARTTLS on 587), each in a thread of its
   own, so that one slow handshake does not hide the others. A port serves the new
   certificate when the first handshake showing it ends; the trial's figure is when
   both do. "stable": from when every handshake started later showed it too. Then
   polling goes on for --confirm-ms and the next trial waits for the daemon's own
   check, whose figure ("served on every port after N ms", counted from the end of
   its reloads) comes from `postmaster status --json`. The daemon's journal gives
   its side: when it installed the pair and when each reload was done.

   The daemon reloads dovecot and makes postfix's smtpd processes start over by
   replacing a table they have open; it reloads postfix only as a fallback, and the
   "reloaded postfix.service" row stays empty while that is not needed. Counted
   under the figures, with the warnings of the bed's journal: old-leaf handshakes
   after the first new one and handshakes that took 1 s or more. Both were common
   while the daemon reloaded postfix: an smtpd from before `postfix reload` that
   takes one more client waits 1 s for each of its broken connections to tlsmgr and
   anvil (both restarted by the reload; strace shows the sleep(1) before the
   reconnect), serves the old certificate, and the master starts no new smtpd for
   the service until it is done, so every client connecting meanwhile waits too.

   postfix's, dovecot's and postmaster's main PIDs are compared before and after.

3. the daemon at rest ("idle"): after a 5 s pause, --idle-seconds (60) with
   nothing going on; VmRSS/VmHWM and utime+stime of postmaster.service's main
   process, read inside the bed (/proc/PID/status, /proc/PID/stat) at the start and
   end of the window. utime+stime come in 10 ms ticks; the sum of the threads'
   schedstat run times (exact, but missing threads that ended) is shown beside it.

4. certificate issuance against pebble ("issuance"): postmaster beside certbot and
   lego (the bed's Debian packages), as ratios. The bed is the one of
   tests/scenarios/test_acme.py (machine "pmbiss" on 10.231.8.0/24): the daemon gets
   its certificates from pebble in the bed (https://127.0.0.1:14000/dir, every name
   resolved to 127.0.0.1 by pebble-challtestsrv), with real http-01 validation on
   port 80 of the bed. The bed's first certificate comes at boot and is waited for.
   The bed's pebble runs with PEBBLE_AUTHZREUSE=0 (tests/lib/bed-setup.sh; by
   default it reuses a valid authorization for half of the new orders, and a trial
   without a validation would not be an issuance); the bench checks that it does.

   Every client orders the names the daemon orders (host_name and [acme]
   extra_names of the bed's configuration: mail.example.org), with a P-256 key (all
   three's default), registers its account once and makes one untimed issuance
   first; then each trial is one new order, an http-01 validation, finalize and
   download. The clients take turns in blocks, in this order:
   - postmaster: `postmaster renew --force` in the bed; the CLI asks the daemon over
     D-Bus, the daemon answers http-01 through postmaster-acme.socket (port 80),
     writes, installs and reloads, and answers once it has seen the new certificate
     served on all 7 TLS ports. Its journal splits the figure: start -> "certificate
     installed" (CLI start, D-Bus call, the ACME exchange, the renewal-information
     request, writing and installing the pair), -> "new certificate served on every
     port" (reloads and checks), -> the command's exit (the D-Bus answer).
   - certbot: `certbot certonly --standalone --http-01-port 80 --force-renewal`,
     config/work/logs directories of its own, REQUESTS_CA_BUNDLE=pebble's API CA.
   - lego: `lego --http --http.port :80 ... run` (`run` issues anew with the stored
     account; `renew` would add lego's random sleep), LEGO_CA_CERTIFICATES=pebble's
     API CA.
   certbot and lego need port 80, which the daemon holds through the socket unit: for
   their blocks postmaster.service is stopped, then postmaster-acme.socket, and the
   daemon is started again without it (port 80 is checked to be free); afterwards,
   whatever happened, the daemon is stopped, the socket started and the daemon
   started again (systemd refuses to start the socket while its service runs), port
   80 is checked to be the socket's again, and one more untimed `postmaster renew
   --force` shows that the daemon answers http-01 on it.

   Figures: wall time of the command, from the host: from just before the fork of a
   shell that starts nsenter (which enters the bed as Bed.run does) until nsenter is
   reaped, so process start is included for all three. postmaster's includes
   installing, reloading and verifying on 7 ports and the D-Bus round trip;
   certbot's and lego's only obtaining the certificate and writing their files.
   pebble's journal (receive times) gives each trial's span from the new order to
   the certificate download, measured the same way for every client, and shows
   that each trial made exactly one order and one http-01 validation. Peak RSS: for
   certbot and lego the ru_maxrss of the command (wait4: its largest process; the
   shell in between keeps this process's own RSS out of it); for postmaster the
   daemon's VmHWM (reset through /proc/PID/clear_refs before each trial), and the
   CLI's ru_maxrss beside it.

"inbound" (issue 13) boots the mail host beside the outside world (as "signing" does,
same machine names and network): messages on port 25 from this host (STARTTLS, no
AUTH, another server's way in) until they are in thomas's Maildir, with rspamd's
checks on and off (inbound_milters emptied and postfix reloaded; interleaved blocks
of 5), then 1,000 messages in one session, 200 learned as spam and 200 as ham; the
memory (PSS and RSS) of rspamd, valkey and unbound at rest, after the 1,000 and after learning.

The header shows the host's load, other beds running and how busy the host's CPUs
were in each part: other engineers' builds and beds share this machine's two cores.

Python 3.11 standard library only (Debian's /usr/bin/python3); root (nspawn, veth).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import imaplib
import json
import math
import os
import queue
import random
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests" / "lib"))
sys.path.insert(0, str(REPO / "tests" / "scenarios"))

import mailclient as mc  # noqa: E402
import mailhost  # noqa: E402
import storm  # noqa: E402
import world as outside_world  # noqa: E402
from bed import CONTAINER_ENV, Bed, BedError, _processes  # noqa: E402

ACCOUNTS = "/etc/postmaster/accounts.toml"
PASSWD_FILE = "/var/lib/postmaster/generated/dovecot/users"
LIVE = "/etc/letsencrypt/live/mail.example.org"
ARCHIVE = "/etc/letsencrypt/archive/mail.example.org"
CERT_PORTS = (993, 587)

TARGETS = {
    "accounts_p99_ms": 1000.0,
    # Issue 9's targets where a person waits: an idle server's new login, and a
    # certificate swap served on 993 and 587.
    "accounts_idle_p50_ms": 40.0,
    "certificate_p50_ms": 250.0,
    "certificate_p99_ms": 400.0,
    "rss_mib": 16.0,
    "idle_cpu_ms_per_min": 10.0,
    # Issue 12: what DKIM signing (rspamd as milter) adds to submission -> delivered
    # at the outside host.
    "signing_added_p50_ms": 20.0,
    # Issue 9: `postmaster renew --force` against pebble, and pebble's own span from
    # the new order to the certificate's download.
    "issuance_command_p50_ms": 600.0,
    "issuance_span_p50_ms": 350.0,
    # Issue 13: what rspamd's checks add to a message on port 25 -> delivered,
    # without network lookups beyond the bed.
    "inbound_added_p50_ms": 50.0,
}

GATE_POLL_S = 0.005
RETRY_EVERY_S = 0.05
CERT_POLL_S = 0.020
MAX_IN_FLIGHT = 16  # handshakes under way per port; more are not started
STALL_MS = 1000.0
TRIAL_GAP_S = 1.1  # idle series: more than dovecot's one second since the last login
FLOOR_LOGINS = 10  # idle series: logins with no edit afterwards, as the trials' users
PARTS = ("accounts", "busy", "certificate", "idle", "inbound", "issuance", "scale", "signing", "storm")
SOURCE_HOSTS = range(10, 251)  # NET.10 - NET.250 as login source addresses
BUSY_SOURCE_HOST = 9


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---- small helpers -------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); a trial that
    never got there counts as infinitely slow."""
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    if k == lo or s[hi] == s[lo]:
        return s[lo]
    if math.isinf(s[hi]):
        return math.inf
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float | None]) -> dict | None:
    """n, min, p50, p90, p99, max; None values (trials that failed) are counted as
    infinitely slow, and figures they make infinite are None ("failed")."""
    xs = [math.inf if v is None else v for v in values]
    if not xs:
        return None
    out = {"n": len(xs), "failed": sum(1 for v in values if v is None)}
    for key, value in (("min", min(xs)), ("p50", percentile(xs, 50)), ("p90", percentile(xs, 90)),
                       ("p99", percentile(xs, 99)), ("max", max(xs))):
        out[key] = None if math.isinf(value) else value
    return out


def leaf_fingerprint(chain_pem: str) -> str:
    first = chain_pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).hexdigest()


def host_cpu_sample() -> tuple[int, int]:
    """(busy, total) jiffies of the whole host, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


def host_busy_pct(a: tuple[int, int], b: tuple[int, int]) -> float:
    busy, total = b[0] - a[0], b[1] - a[1]
    return 100.0 * busy / total if total else 0.0


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def other_beds(own: str) -> list[str]:
    names = []
    for _pid, argv in _processes():
        if argv and argv[0].endswith("systemd-nspawn"):
            for a in argv:
                if a.startswith("--machine=") and a[len("--machine="):] != own:
                    names.append(a[len("--machine="):])
    return sorted(set(names))


# ---- the bed ---------------------------------------------------------------------------

class Bench:
    def __init__(self, host: mailhost.MailHost, bed: Bed, args):
        self.host = host
        self.bed = bed
        self.args = args
        self.server = mc.Server(address=bed.ip, ca_file=str(host.ca.cert), timeout=5.0)
        self.net = bed.ip.rsplit(".", 1)[0]
        self.sources: list[str] = []
        self._pool: list[str] = []
        self._pool_lock = threading.Lock()
        self.retired = 0
        self.healing = False
        self._heals: list[threading.Thread] = []

    # -- in the bed --

    def status(self) -> dict:
        out = self.bed.run(["postmaster", "status", "--json"])
        if not out.stdout.strip():
            raise BedError(f"postmaster status gave nothing: {out.stderr}")
        return json.loads(out.stdout)

    def wait_status(self, what: str, pred, timeout: float = 30.0, every: float = 0.1) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            s = self.status()
            if pred(s):
                return s
            if time.monotonic() > deadline:
                raise BedError(f"timed out waiting for {what}; status: {json.dumps(s)}")
            time.sleep(every)

    def main_pids(self) -> dict[str, int]:
        return {u: self.bed.main_pid(u) for u in ("postfix.service", "dovecot.service", "postmaster.service",
                                                  "postmaster-tls.service")}

    def journal_entries(self, message: str) -> list[dict]:
        out = self.bed.run(["journalctl", "--no-pager", "--boot", "-u", "postmaster.service", "-o", "json",
                            f"MESSAGE={message}"], timeout=60)
        entries = []
        for line in out.stdout.splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if e.get("MESSAGE") == message:
                ts = e.get("_SOURCE_REALTIME_TIMESTAMP") or e.get("__REALTIME_TIMESTAMP")
                e["_t"] = int(ts) / 1e6
                entries.append(e)
        return sorted(entries, key=lambda e: e["_t"])

    def write(self, inside: str, text: str, mode: int, group: str | None = None) -> None:
        """Writes a file in the bed from the host (no process in the bed): owner
        root, `group` by its name in the bed's /etc/group."""
        gid = 0
        if group is not None:
            for line in self.bed.path("/etc/group").read_text().splitlines():
                parts = line.split(":")
                if parts[0] == group:
                    gid = int(parts[2])
                    break
            else:
                raise BedError(f"no group {group!r} in the bed")
        path = self.bed.path(inside)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.fchown(fd, 0, gid)
            os.fchmod(fd, mode)
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    # -- login source addresses --

    def add_sources(self) -> None:
        self.sources = [f"{self.net}.{i}" for i in SOURCE_HOSTS] + [f"{self.net}.{BUSY_SOURCE_HOST}"]
        batch = "".join(f"address add {ip}/24 dev {self.bed.veth}\n" for ip in self.sources)
        _ip_batch(batch)
        self._pool = [f"{self.net}.{i}" for i in SOURCE_HOSTS]

    def remove_sources(self) -> None:
        if not self.sources or not Path("/sys/class/net", self.bed.veth).exists():
            return
        batch = "".join(f"address del {ip}/24 dev {self.bed.veth}\n" for ip in self.sources)
        _ip_batch(batch, check=False)
        self.sources = []

    def take_source(self) -> str | None:
        with self._pool_lock:
            return self._pool.pop(0) if self._pool else None

    def give_back(self, ip: str) -> None:
        with self._pool_lock:
            self._pool.append(ip)

    def retire(self, ip: str) -> None:
        """A login from `ip` failed: dovecot delays its next ones. While healing
        (the busy series, where logins go on anyway), one successful login as
        thomas clears the penalty and the address goes back to the pool; otherwise
        it is not used again."""
        with self._pool_lock:
            self.retired += 1
            if not self.healing:
                return
            th = threading.Thread(target=self._heal, args=(ip,), daemon=True)
            self._heals.append(th)
        th.start()

    def _heal(self, ip: str) -> None:
        for _ in range(5):
            try:
                self.login(ip, "thomas", mailhost.PASSWORDS["thomas"]).logout()
                self.give_back(ip)
                return
            except Exception:  # noqa: BLE001 - tried again; lost after five
                time.sleep(0.5)

    def join_heals(self) -> None:
        with self._pool_lock:
            heals, self._heals = self._heals, []
        for th in heals:
            th.join(30)

    # -- IMAPS login from a given source address --

    def login(self, source: str, user: str, password: str) -> imaplib.IMAP4_SSL:
        """An IMAPS session logged in as `user`, connected from `source`."""
        m = _BoundIMAP4_SSL(source, self.server.address, 993, ssl_context=mc.tls_context(self.server),
                            timeout=self.server.timeout)
        try:
            m.login(user, password)
        except BaseException:
            m.shutdown()
            raise
        return m


class _BoundIMAP4_SSL(imaplib.IMAP4_SSL):
    """IMAPS from a chosen source address (imaplib has no parameter for it)."""

    def __init__(self, source: str, *args, **kwargs):
        self._source = source
        super().__init__(*args, **kwargs)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def _ip_batch(batch: str, check: bool = True) -> None:
    res = subprocess.run(["ip", "-batch", "-"], input=batch, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise BedError(f"ip -batch failed: {res.stderr.strip()}")


# ---- 1. accounts edit -> new login ------------------------------------------------------

@dataclass
class AccountsTrial:
    user: str
    login_ms: float | None = None      # rename -> IMAPS LOGIN answered OK
    visible_ms: float | None = None    # rename -> the user is in dovecot's passwd-file
    daemon_ms: float | None = None     # rename -> the daemon logged "accounts applied"
    attempts: int = 0
    failed_logins: int = 0
    error: str | None = None
    t_wall: float = 0.0


def make_users(prefix: str, n: int) -> list[tuple[str, str, str]]:
    """(name, password, hash) of n new mailboxes; hashing is not what is measured."""
    users = []
    for i in range(1, n + 1):
        password = secrets.token_hex(10)
        users.append((f"{prefix}{i:03d}", password, mailhost.hash_password(password)))
    return users


def run_accounts(b: Bench, users: list[tuple[str, str, str]], busy: bool) -> dict:
    """One series of accounts trials; `busy`: with a login as thomas every 100 ms."""
    bed = b.bed
    series = "busy" if busy else "idle"
    passwd_path = bed.path(PASSWD_FILE)
    accounts_path = bed.path(ACCOUNTS)
    staged = ACCOUNTS + ".bench-new"
    staged_path = bed.path(staged)
    text = b.host.accounts
    trials: list[AccountsTrial] = []
    last_login = 0.0
    retired_before = b.retired
    unsettled: list = []

    stop_busy = threading.Event()
    busy_thread = None
    busy_count = [0, 0]
    if busy:
        def busy_loop():
            src = f"{b.net}.{BUSY_SOURCE_HOST}"
            while not stop_busy.is_set():
                try:
                    b.login(src, "thomas", mailhost.PASSWORDS["thomas"]).logout()
                    busy_count[0] += 1
                except Exception:  # noqa: BLE001 - a background load, counted only
                    busy_count[1] += 1
                stop_busy.wait(0.1)
        busy_thread = threading.Thread(target=busy_loop, daemon=True, name="busy-logins")
        busy_thread.start()
        b.healing = True  # logins go on anyway: penalised addresses are cleared by one
        time.sleep(1.0)

    try:
        for i, (user, password, hashed) in enumerate(users, 1):
            text += f'\n[mailboxes.{user}]\npassword = "{hashed}"\n'
            # Staged in the bed with the real file's group and mode, under a name the
            # daemon does not look at: staging is not an event.
            b.write(staged, text, 0o640, group="postmaster")
            trial = AccountsTrial(user=user)
            needle = f"\n{user}:".encode()
            if not busy:
                # dovecot re-reads its passwd-file at most once a second, at a login:
                # keep this trial's first login out of the previous login's second.
                pause = last_login + TRIAL_GAP_S - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            else:
                # Here the wait for the next second is part of the figure: spread the
                # renames evenly over the wall-clock second (trial i of n, from 1, at
                # (i - 0.5)/n of it), or back-to-back trials would bunch up at one point.
                phase = (i - 0.5) / len(users)
                earliest = time.time() + 0.2
                time.sleep(0.2 + (phase - earliest % 1.0) % 1.0)

            trial.t_wall = time.time()
            t0 = time.perf_counter()
            os.rename(staged_path, accounts_path)
            deadline = t0 + b.args.trial_timeout
            # No login can work before the user is in the file dovecot reads.
            while True:
                try:
                    if needle in b"\n" + passwd_path.read_bytes():
                        break
                except FileNotFoundError:
                    pass
                if time.perf_counter() > deadline:
                    break
                time.sleep(GATE_POLL_S)
            t_visible = time.perf_counter()
            if t_visible > deadline:
                trial.error = "the user never appeared in the passwd-file"
            else:
                trial.visible_ms = (t_visible - t0) * 1000
                t_ok, attempts, err, pending = _login_until_ok(b, user, password, deadline)
                trial.attempts = attempts
                if busy:
                    # Failed logins are answered after 2 s; logins go on anyway here.
                    unsettled.append((trial, pending))
                else:
                    # Nothing of this trial may still be under way when the next starts.
                    trial.failed_logins = _settle(pending)
                if t_ok is None:
                    trial.error = err or "no login succeeded"
                else:
                    trial.login_ms = (t_ok - t0) * 1000
            last_login = time.monotonic()
            trials.append(trial)
            if trial.error:
                say(f"accounts ({series}) trial {i}: {trial.error}")
            elif i % 10 == 0 or i == len(users):
                say(f"accounts ({series}): {i}/{len(users)} trials, last {trial.login_ms:.0f} ms")
        b.host.accounts = text
    finally:
        stop_busy.set()
        if busy_thread:
            busy_thread.join(5)
        for trial, pending in unsettled:
            trial.failed_logins = _settle(pending)
        b.healing = False
        b.join_heals()

    floor = [] if busy else login_floor(b, [(u, p) for u, p, _h in users[:FLOOR_LOGINS]])
    # The daemon's side of each trial, from its journal (microsecond timestamps).
    applied = b.journal_entries("accounts applied")
    for t in trials:
        later = [e["_t"] for e in applied if e["_t"] >= t.t_wall]
        if later:
            t.daemon_ms = (later[0] - t.t_wall) * 1000
    s = b.status()
    ok = [t for t in trials if t.login_ms is not None]
    return {
        "series": series,
        "trials": [t.__dict__ for t in trials],
        "login_ms": summary([t.login_ms for t in trials]),
        "visible_ms": summary([t.visible_ms for t in trials]),
        "floor_ms": summary(floor) if floor else None,
        "daemon_ms": summary([t.daemon_ms for t in ok if t.daemon_ms is not None]),
        "failed_trials": len(trials) - len(ok),
        "failed_logins": sum(t.failed_logins for t in trials),
        "trials_with_failed_logins": sum(1 for t in trials if t.failed_logins),
        "extra_attempts": sum(max(0, t.attempts - 1) for t in trials),
        "mailboxes_after": s["accounts"]["mailboxes"],
        "busy_logins": {"ok": busy_count[0], "failed": busy_count[1]} if busy else None,
        "addresses_penalised": b.retired - retired_before,
    }


def login_floor(b: Bench, users: list[tuple[str, str]]) -> list[float]:
    """ms from connect to LOGIN answered OK for mailboxes that exist already, with no
    edit: what this client and dovecot take, the part of a trial's figure the
    daemon cannot shorten. One login each, from a fresh address, 0.2 s apart."""
    floor = []
    for user, password in users:
        src = b.take_source()
        if src is None:
            break
        time.sleep(0.2)
        t0 = time.perf_counter()
        try:
            m = b.login(src, user, password)
        except (imaplib.IMAP4.error, OSError, ssl.SSLError) as e:
            say(f"floor login as {user} failed: {e}")
            b.retire(src)
            continue
        floor.append((time.perf_counter() - t0) * 1000)
        try:
            m.logout()
        except Exception:  # noqa: BLE001
            pass
        b.give_back(src)
    return floor


def _login_until_ok(b: Bench, user: str, password: str, deadline: float, every: float = RETRY_EVERY_S):
    """IMAPS logins from fresh source addresses until one is answered OK: one now,
    and one more every `every` s while none has been answered OK (a failed login
    is answered only after dovecot's 2 s delay). Returns (perf_counter of the OK,
    attempts, error, pending): `_settle(pending)` waits for the logins still under
    way and returns how many of this trial's logins failed."""
    results: queue.Queue = queue.Queue()
    threads: list[threading.Thread] = []

    def attempt(src: str):
        try:
            m = b.login(src, user, password)
        except imaplib.IMAP4.error as e:
            b.retire(src)  # dovecot penalises this address now
            results.put(("fail", None, str(e)))
            return
        except (OSError, ssl.SSLError) as e:
            b.give_back(src)  # no authentication happened
            results.put(("error", None, f"{type(e).__name__}: {e}"))
            return
        t = time.perf_counter()
        results.put(("ok", t, None))
        try:
            m.logout()
        except Exception:  # noqa: BLE001
            pass
        b.give_back(src)

    def start() -> bool:
        src = b.take_source()
        if src is None:
            return False
        th = threading.Thread(target=attempt, args=(src,), daemon=True)
        th.start()
        threads.append(th)
        return True

    attempts, failures, in_flight, t_ok, err = 0, 0, 0, None, None
    if start():
        attempts, in_flight = 1, 1
    else:
        return None, 0, "no source address left", (threads, results, 0)
    while t_ok is None and time.perf_counter() < deadline:
        try:
            kind, t, why = results.get(timeout=every)
        except queue.Empty:
            if start():  # slow or failing: one more, from another address
                attempts, in_flight = attempts + 1, in_flight + 1
            continue
        in_flight -= 1
        if kind == "ok":
            t_ok = t
            break
        failures += kind == "fail"
        err = why
        if in_flight == 0 and start():
            attempts, in_flight = attempts + 1, in_flight + 1
    return t_ok, attempts, err, (threads, results, failures)


def _settle(pending) -> int:
    threads, results, failures = pending
    for th in threads:
        th.join(10)
    while not results.empty():
        kind, _t, _why = results.get_nowait()
        failures += kind == "fail"
    return failures


# ---- 2. certificate replaced -> served on 993 and 587 ----------------------------------

@dataclass
class CertTrial:
    fingerprint: str
    both_ms: float | None = None          # swap -> both ports have shown the new leaf
    stable_ms: float | None = None        # swap -> every later handshake showed it
    port_ms: dict = field(default_factory=dict)
    old_after_new: dict = field(default_factory=dict)  # old-leaf handshakes that ended after the first new one
    late_old_longest_ms: float = 0.0  # how long the longest of those took
    errors: dict = field(default_factory=dict)
    handshakes: int = 0
    slowest_handshake_ms: float = 0.0
    stalled: dict = field(default_factory=dict)  # port -> handshakes that took a second or more
    skipped: int = 0  # polls not started because MAX_IN_FLIGHT handshakes were under way
    handshake_log: dict = field(default_factory=dict)  # port -> [started ms, ended ms, leaf]
    daemon_served_ms: float | None = None  # the daemon's "served on every port after N ms"
    daemon_installed_ms: float | None = None  # swap -> the daemon logged "certificate installed"
    daemon_reloaded_ms: dict = field(default_factory=dict)  # swap -> the daemon logged "reloaded" (by unit)
    daemon_verified_ok: bool | None = None
    error: str | None = None
    t_wall: float = 0.0


class PortPoller(threading.Thread):
    """Starts a TLS handshake on one port every 20 ms, each in a thread of its own,
    whether or not the ones before it have finished (a connection that an old smtpd
    accepts at the moment of `postfix reload` can take 1-2 s; one poller that waits
    for it would see nothing else meanwhile), and records which leaf each showed."""

    def __init__(self, b: Bench, port: int, t0: float, new: str, old: str):
        super().__init__(daemon=True, name=f"poll-{port}")
        self.b, self.port, self.t0, self.new, self.old = b, port, t0, new, old
        self.stop_event = threading.Event()
        self.first_new = threading.Event()
        self._lock = threading.Lock()
        # (started, finished) in ms since the swap, and new|old|other|error
        self.obs: list[tuple[float, float, str]] = []
        self._threads: list[threading.Thread] = []
        self.skipped = 0

    def _handshake(self, started: float) -> None:
        try:
            fp = mc.served_fingerprint(self.b.server, self.port)
            kind = "new" if fp == self.new else "old" if fp == self.old else "other"
        except Exception:  # noqa: BLE001 - a handshake that failed is an observation too
            kind = "error"
        with self._lock:
            self.obs.append((started, (time.perf_counter() - self.t0) * 1000, kind))
        if kind == "new":
            self.first_new.set()

    def run(self) -> None:
        next_at = time.perf_counter()
        while not self.stop_event.is_set():
            started = (time.perf_counter() - self.t0) * 1000
            if sum(th.is_alive() for th in self._threads[-MAX_IN_FLIGHT:]) < MAX_IN_FLIGHT:
                th = threading.Thread(target=self._handshake, args=(started,), daemon=True)
                th.start()
                self._threads.append(th)
            else:
                self.skipped += 1  # enough handshakes are hanging already: no pile-up
            next_at += CERT_POLL_S
            delay = next_at - time.perf_counter()
            if delay > 0:
                self.stop_event.wait(delay)
            else:
                next_at = time.perf_counter()
        for th in self._threads:  # the slow ones are what this is about
            th.join(self.b.server.timeout + 1)

    def figures(self) -> dict:
        """first: the first handshake to show the new leaf, when it ended;
        stable: of the handshakes in the order they started, the first of the
        unbroken run of new leaves at the end, when it ended (every handshake
        started after it showed the new leaf); late_old: handshakes that showed the
        old leaf but ended after `first`, and the longest of them."""
        with self._lock:
            obs = sorted(self.obs)
        news = [end for _s, end, kind in obs if kind == "new"]
        if not news:
            return {"first": None}
        first = min(news)
        stable = None
        for _s, end, kind in reversed(obs):
            if kind != "new":
                break
            stable = end
        late = [(end - start) for start, end, kind in obs if kind == "old" and end > first]
        return {
            "first": first,
            "stable": stable,
            "late_old": len(late),
            "late_old_longest_ms": max(late, default=0.0),
            "errors": sum(1 for *_x, kind in obs if kind == "error"),
            "handshakes": len(obs),
            "slowest_ms": max(end - start for start, end, _k in obs),
            "stalled": sum(1 for start, end, _k in obs if end - start >= STALL_MS),
            "skipped": self.skipped,
        }


def make_pairs(host: mailhost.MailHost, n: int) -> list[tuple[str, str, str]]:
    """(chain, key, leaf fingerprint) of n new certificates for the host name."""
    pairs = []
    for i in range(n):
        chain, key = host.ca.issue(host.dir / "bench-certs", [mailhost.HOST_NAME], stem=f"bench{i:03d}")
        text = chain.read_text()
        pairs.append((text, key.read_text(), leaf_fingerprint(text)))
    return pairs


def run_certificates(b: Bench, pairs: list[tuple[str, str, str]]) -> dict:
    bed = b.bed
    n = len(pairs)
    s = b.wait_status("a verified certificate", lambda s: s["certificate"]["fingerprint"] and not s["certificate"]["error"])
    old = s["certificate"]["fingerprint"]
    trials: list[CertTrial] = []
    for i, (chain, key, fp) in enumerate(pairs):
        k = i + 2  # the bed's setup wrote fullchain1.pem / privkey1.pem
        b.write(f"{ARCHIVE}/fullchain{k}.pem", chain, 0o644)
        b.write(f"{ARCHIVE}/privkey{k}.pem", key, 0o640, group="postmaster")
        # certbot makes each new symlink under a temporary name, then renames it over
        # the live one: key first, then chain. Dot names are not watched.
        for name in ("privkey", "fullchain"):
            tmp_link = bed.path(f"{LIVE}/.{name}.bench-new")
            if tmp_link.is_symlink():
                tmp_link.unlink()
            os.symlink(f"../../archive/mail.example.org/{name}{k}.pem", tmp_link)
        trial = CertTrial(fingerprint=fp)
        time.sleep(0.05)

        trial.t_wall = time.time()
        t0 = time.perf_counter()
        for name in ("privkey", "fullchain"):
            os.rename(bed.path(f"{LIVE}/.{name}.bench-new"), bed.path(f"{LIVE}/{name}.pem"))
        pollers = [PortPoller(b, p, t0, fp, old) for p in CERT_PORTS]
        for p in pollers:
            p.start()
        deadline = t0 + b.args.trial_timeout
        for p in pollers:
            p.first_new.wait(max(0.0, deadline - time.perf_counter()))
        if all(p.first_new.is_set() for p in pollers):
            time.sleep(b.args.confirm_ms / 1000)
        for p in pollers:
            p.stop_event.set()
        for p in pollers:
            p.join(10)

        for p in pollers:
            f = p.figures()
            with p._lock:
                trial.handshake_log[str(p.port)] = [[round(a), round(z), k] for a, z, k in sorted(p.obs)]
            if f["first"] is None:
                trial.error = f"port {p.port} never served the new leaf in {b.args.trial_timeout:.0f} s"
                continue
            trial.port_ms[p.port] = f["first"]
            trial.port_ms[f"{p.port}_stable"] = f["stable"]
            trial.old_after_new[p.port] = f["late_old"]
            trial.late_old_longest_ms = max(trial.late_old_longest_ms, f["late_old_longest_ms"])
            trial.errors[p.port] = f["errors"]
            trial.handshakes += f["handshakes"]
            trial.slowest_handshake_ms = max(trial.slowest_handshake_ms, f["slowest_ms"])
            trial.stalled[p.port] = f["stalled"]
            trial.skipped += f["skipped"]
        if not trial.error:
            trial.both_ms = max(trial.port_ms[p] for p in CERT_PORTS)
            stables = [trial.port_ms[f"{p}_stable"] for p in CERT_PORTS]
            trial.stable_ms = max(stables) if all(x is not None for x in stables) else None

        # The daemon finishes its own check before the next trial starts.
        try:
            s = b.wait_status("the daemon's check of the new certificate",
                              lambda s: s["certificate"]["fingerprint"] == fp and s["certificate"]["verified"],
                              timeout=30)
            v = s["certificate"]["verified"]
            trial.daemon_verified_ok = v["ok"]
            m = re.search(r"served on every port after (\d+) ms", v["detail"])
            if m:
                trial.daemon_served_ms = float(m.group(1))
            old = fp
        except BedError as e:
            trial.error = (trial.error + "; " if trial.error else "") + str(e).splitlines()[0]
            old = b.status()["certificate"]["fingerprint"]
        trials.append(trial)
        if trial.error:
            say(f"certificate trial {i + 1}: {trial.error}")
        elif (i + 1) % 10 == 0 or i + 1 == n:
            say(f"certificate: {i + 1}/{n} trials, last {trial.both_ms:.0f} ms")

    installed = b.journal_entries("certificate installed")
    reloaded = b.journal_entries("reloaded")
    for t in trials:
        later = [e["_t"] for e in installed if e["_t"] >= t.t_wall]
        if later:
            t.daemon_installed_ms = (later[0] - t.t_wall) * 1000
        # The TLS front takes new certificates for IMAP, POP3 and ManageSieve;
        # dovecot is not reloaded (a line for it would be a finding).
        for unit in ("postfix.service", "postmaster-tls.service", "dovecot.service"):
            later = [e["_t"] for e in reloaded if e["_t"] >= t.t_wall and e.get("F_UNIT") == unit]
            if later:
                t.daemon_reloaded_ms[unit] = (later[0] - t.t_wall) * 1000
    ok = [t for t in trials if t.both_ms is not None]
    return {
        "journal_warnings": journal_warnings(b, trials[0].t_wall if trials else 0.0),
        "trials": [{**t.__dict__, "port_ms": {str(k): v for k, v in t.port_ms.items()},
                    "old_after_new": {str(k): v for k, v in t.old_after_new.items()},
                    "errors": {str(k): v for k, v in t.errors.items()},
                    "stalled": {str(k): v for k, v in t.stalled.items()}} for t in trials],
        "both_ms": summary([t.both_ms for t in trials]),
        "stable_ms": summary([t.stable_ms for t in trials]),
        "port_ms": {str(p): summary([t.port_ms.get(p) for t in trials]) for p in CERT_PORTS},
        "daemon_served_ms": summary([t.daemon_served_ms for t in trials if t.daemon_served_ms is not None]),
        "daemon_installed_ms": summary([t.daemon_installed_ms for t in trials if t.daemon_installed_ms is not None]),
        "daemon_reloaded_ms": {u: summary([t.daemon_reloaded_ms[u] for t in trials if u in t.daemon_reloaded_ms])
                               for u in ("postfix.service", "postmaster-tls.service", "dovecot.service")},
        "daemon_verify_failed": sum(1 for t in trials if t.daemon_verified_ok is False),
        "failed_trials": len(trials) - len(ok),
        "trials_with_old_after_new": sum(1 for t in ok if any(t.old_after_new.values())),
        "old_after_new_by_port": {str(p): sum(1 for t in ok if t.old_after_new.get(p)) for p in CERT_PORTS},
        "late_old_longest_ms": max((t.late_old_longest_ms for t in ok), default=0.0),
        "slowest_handshake_ms": max((t.slowest_handshake_ms for t in trials), default=0.0),
        "trials_with_stalls_by_port": {str(p): sum(1 for t in trials if t.stalled.get(p)) for p in CERT_PORTS},
        "handshake_errors": sum(sum(t.errors.values()) for t in trials),
        "handshakes": sum(t.handshakes for t in trials),
        "polls_skipped": sum(t.skipped for t in trials),
    }


def journal_warnings(b: Bench, since: float) -> list[list]:
    """postfix's, dovecot's and postmaster's warnings and errors since `since`
    (epoch s), as [count, message with numbers and ids blanked], most frequent first."""
    out = b.bed.run(["journalctl", "--no-pager", "--boot", "-o", "cat", "--priority", "warning",
                     "--since", f"@{since:.3f}", "-u", "postfix.service", "-u", "dovecot.service",
                     "-u", "postmaster.service", "-u", "postmaster-tls.service"], timeout=60).stdout
    counts: dict[str, int] = {}
    for line in out.splitlines():
        key = re.sub(r"\d+", "N", line)[:200]
        counts[key] = counts.get(key, 0) + 1
    return sorted(([n, k] for k, n in counts.items()), reverse=True)


# ---- 3. the daemon at rest ---------------------------------------------------------------

def proc_sample(b: Bench, pid: int) -> dict:
    out = b.bed.run(["sh", "-c", f"cat /proc/{pid}/stat; cat /proc/{pid}/status; "
                                 f"for t in /proc/{pid}/task/*; do echo task ${{t##*/}} $(cat $t/schedstat); done"],
                    check=True).stdout
    lines = out.splitlines()
    stat = lines[0]
    rest = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of stat(5)
    status = {}
    tasks = {}
    for line in lines[1:]:
        if line.startswith("task "):
            parts = line.split()
            if len(parts) >= 3:
                tasks[parts[1]] = int(parts[2])  # ns on a CPU
        elif ":" in line:
            k, v = line.split(":", 1)
            status[k] = v.strip()
    kib = lambda key: int(status[key].split()[0]) if key in status else None  # noqa: E731
    return {"t": time.monotonic(), "ticks": utime + stime, "rss_kib": kib("VmRSS"), "hwm_kib": kib("VmHWM"),
            "threads": int(status.get("Threads", "0")), "tasks_ns": tasks}


def run_idle(b: Bench, seconds: float) -> dict:
    time.sleep(5)
    pid = b.bed.main_pid("postmaster.service")
    if not pid:
        raise BedError("postmaster.service has no main PID")
    say(f"idle: watching postmaster (pid {pid} in the bed) for {seconds:.0f} s")
    cpu0 = host_cpu_sample()
    a = proc_sample(b, pid)
    time.sleep(seconds)
    z = proc_sample(b, pid)
    cpu1 = host_cpu_sample()
    window = z["t"] - a["t"]
    hz = os.sysconf("SC_CLK_TCK")
    ticks_ms = (z["ticks"] - a["ticks"]) * 1000 / hz
    common = set(a["tasks_ns"]) & set(z["tasks_ns"])
    sched_ms = sum(z["tasks_ns"][t] - a["tasks_ns"][t] for t in common) / 1e6
    sched_ms += sum(z["tasks_ns"][t] for t in set(z["tasks_ns"]) - common) / 1e6
    per_min = 60.0 / window
    return {
        "pid": pid,
        "pid_after": b.bed.main_pid("postmaster.service"),
        "window_s": window,
        "rss_mib": max(a["rss_kib"], z["rss_kib"]) / 1024,
        "rss_mib_start": a["rss_kib"] / 1024,
        "rss_mib_end": z["rss_kib"] / 1024,
        "hwm_mib": z["hwm_kib"] / 1024,
        "cpu_ms_per_min": ticks_ms * per_min,
        "cpu_ticks": z["ticks"] - a["ticks"],
        "clk_tck": hz,
        "cpu_ms_per_min_schedstat": sched_ms * per_min,
        "threads": [a["threads"], z["threads"]],
        "threads_gone": len(set(a["tasks_ns"]) - set(z["tasks_ns"])),
        "host_busy_pct": host_busy_pct(cpu0, cpu1),
    }


# ---- 4. issuance against pebble: postmaster, certbot, lego ---------------------------------

PEBBLE_DIRECTORY = "https://127.0.0.1:14000/dir"
PEBBLE_API_CA = "/etc/postmaster/pebble-api.pem"  # pebble's API certificate's CA, in the bed
ACME_SOCKET = "postmaster-acme.socket"
CLIENTS = ("postmaster", "certbot", "lego")
ISSUANCE_TIMEOUT_S = 120.0
ISSUANCE_GAP_S = 0.5


def acme_names() -> list[str]:
    """The names the daemon orders (config.rs certificate_names): host_name, then
    [acme] extra_names, from the ACME bed's configuration."""
    config = tomllib.loads(mailhost.ACME_CONFIG)
    names = [config["host_name"]]
    for name in config.get("acme", {}).get("extra_names", []):
        if name not in names:
            names.append(name)
    return names


@dataclass
class Measured:
    rc: int
    out: str
    err: str
    wall_ms: float
    maxrss_kib: int
    t_start: float  # epoch s
    t_end: float


_PR_SET_CHILD_SUBREAPER = 36


def run_measured(bed: Bed, argv: list[str], env: dict | None = None,
                 timeout: float = ISSUANCE_TIMEOUT_S) -> Measured:
    """`argv` in the bed, entered as Bed.run does it (nsenter from the host): wall
    time from just before the fork until nsenter is reaped, and the peak RSS of its
    largest process (wait4's ru_maxrss: nsenter and the command it waited for).

    A process forked from this one counts this one's RSS at its exec (the kernel
    takes the old mm's high-water mark), ~28 MiB: so a shell (small) starts nsenter
    in the background and exits, and nsenter, orphaned, is reaped here because this
    process is the child subreaper meanwhile."""
    full = ["nsenter", "-t", str(bed.pid1), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--", *argv]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    r, w = os.pipe()
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            t_start = time.time()
            t0 = time.perf_counter()
            shell = subprocess.Popen(["/bin/sh", "-c", f'"$@" {w}>&- & echo $! >&{w}', "sh", *full],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=(w,),
                                     env={**CONTAINER_ENV, **(env or {})}, start_new_session=True)
            os.close(w)
            w = -1
            pid = int(os.read(r, 64).decode().strip() or 0)
            shell.wait()
            if not pid:
                raise BedError(f"could not start {argv}")

            def kill():
                try:
                    os.killpg(shell.pid, signal.SIGKILL)  # its session and process group
                except ProcessLookupError:
                    pass
            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                _pid, status, usage = os.wait4(pid, 0)
            finally:
                timer.cancel()
            t1 = time.perf_counter()
            out.seek(0)
            err.seek(0)
            return Measured(rc=os.waitstatus_to_exitcode(status), out=out.read().decode(errors="replace"),
                            err=err.read().decode(errors="replace"), wall_ms=(t1 - t0) * 1000,
                            maxrss_kib=usage.ru_maxrss, t_start=t_start, t_end=time.time())
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@dataclass
class IssuanceTrial:
    client: str
    wall_ms: float | None = None       # command start -> exit, from the host
    rss_kib: int | None = None         # ru_maxrss of the command
    daemon_hwm_kib: int | None = None  # postmaster: the daemon's VmHWM, reset before the trial
    pebble_ms: float | None = None     # pebble logged the new order -> the certificate download
    orders: int = 0                    # new orders pebble logged meanwhile
    validations: int = 0               # authorizations pebble made valid by a completed challenge
    installed_ms: float | None = None  # postmaster: start -> daemon logged "certificate installed"
    served_ms: float | None = None     # postmaster: "certificate installed" -> "served on every port"
    reply_ms: float | None = None      # postmaster: daemon logged "obtained ..." -> command exit
    fingerprint: str | None = None
    error: str | None = None
    t_start: float = 0.0
    t_end: float = 0.0


def journal_events(bed: Bed, unit: str, since: float) -> list[tuple[float, str]]:
    """(receive time in epoch s, MESSAGE) of `unit`'s journal since `since`."""
    out = bed.run(["journalctl", "--no-pager", "-u", unit, "-o", "json", "--since", f"@{since:.3f}"],
                  timeout=60).stdout
    events = []
    for line in out.splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        msg = e.get("MESSAGE")
        if isinstance(msg, str):
            ts = e.get("_SOURCE_REALTIME_TIMESTAMP") or e["__REALTIME_TIMESTAMP"]
            events.append((int(ts) / 1e6, msg))
    return sorted(events)


class Issuance:
    """The ACME bed: the three clients' setup and trials."""

    def __init__(self, host: mailhost.MailHost, bed: Bed, trials: int):
        self.host = host
        self.bed = bed
        self.trials = trials
        self.names = acme_names()
        self.work = ""  # a directory in the bed for certbot's and lego's files

    # -- the bed --

    def status(self) -> dict:
        out = self.bed.run(["postmaster", "status", "--json"])
        if not out.stdout.strip():
            raise BedError(f"postmaster status gave nothing: {out.stderr}")
        return json.loads(out.stdout)

    def port80(self) -> str:
        return self.bed.run(["ss", "-Hltnp", "sport = :80"], check=True).stdout.strip()

    def check_no_authz_reuse(self) -> None:
        """Every order must be validated: pebble must not reuse authorizations."""
        env = self.bed.run(["systemctl", "show", "--property=Environment", "--value", "pebble.service"]).stdout
        if "PEBBLE_AUTHZREUSE=0" not in env:
            raise BedError(f"pebble runs without PEBBLE_AUTHZREUSE=0 (see tests/lib/bed-setup.sh): {env}")

    def without_socket(self) -> None:
        """The daemon runs without port 80, which certbot and lego need then."""
        self.bed.run(["systemctl", "stop", "postmaster.service", ACME_SOCKET], check=True)
        self.bed.run(["systemctl", "start", "postmaster.service"], check=True)
        held = self.port80()
        if held:
            raise BedError(f"port 80 is still held with {ACME_SOCKET} stopped: {held}")

    def with_socket(self) -> None:
        """The daemon with port 80 from the socket unit again (systemd refuses to start
        the socket while its service runs)."""
        self.bed.run(["systemctl", "stop", "postmaster.service"], check=True)
        self.bed.run(["systemctl", "start", ACME_SOCKET], check=True)
        self.bed.run(["systemctl", "start", "postmaster.service"], check=True)
        held = self.port80()
        if "postmaster" not in held or "systemd" not in held:
            raise BedError(f"port 80 is not the socket's and the daemon's again: {held!r}")

    # -- the clients --

    def certbot(self, *args: str) -> list[str]:
        d = f"{self.work}/certbot"
        return ["certbot", *args, "--non-interactive", "--server", PEBBLE_DIRECTORY, "--config-dir", f"{d}/config",
                "--work-dir", f"{d}/work", "--logs-dir", f"{d}/logs"]

    def certbot_order(self) -> list[str]:
        return self.certbot("certonly", "--standalone", "--http-01-port", "80", "--agree-tos", "--force-renewal",
                            *[a for n in self.names for a in ("-d", n)])

    def lego_run(self) -> list[str]:
        return ["lego", "--server", PEBBLE_DIRECTORY, "--accept-tos", "--email", "bench@example.org",
                *[a for n in self.names for a in ("--domains", n)], "--http", "--http.port", ":80",
                "--path", f"{self.work}/lego", "run"]

    def command(self, client: str) -> tuple[list[str], dict, str]:
        """(argv, environment, where the new chain lands) of one trial of `client`."""
        if client == "postmaster":
            return ["postmaster", "renew", "--force"], {}, "/var/lib/postmaster/tls/fullchain.pem"
        if client == "certbot":
            return (self.certbot_order(), {"REQUESTS_CA_BUNDLE": PEBBLE_API_CA},
                    f"{self.work}/certbot/config/live/{self.names[0]}/fullchain.pem")
        return (self.lego_run(), {"LEGO_CA_CERTIFICATES": PEBBLE_API_CA},
                f"{self.work}/lego/certificates/{self.names[0].replace('*', '_')}.crt")

    def chain_fingerprint(self, path: str) -> str | None:
        try:
            return leaf_fingerprint(self.bed.path(path).read_text())
        except (OSError, ValueError):
            return None

    def warm_up(self, client: str) -> None:
        """Registers the account and makes the first (untimed) issuance."""
        if client == "certbot":
            r = run_measured(self.bed, self.certbot("register", "--agree-tos", "--register-unsafely-without-email"),
                             {"REQUESTS_CA_BUNDLE": PEBBLE_API_CA})
            if r.rc != 0:
                raise BedError(f"certbot register failed ({r.rc}): {r.err.strip()[-1500:]}")
        argv, env, _chain = self.command(client)
        r = run_measured(self.bed, argv, env)
        if r.rc != 0:
            raise BedError(f"{client}'s first issuance failed ({r.rc}): {(r.out + r.err).strip()[-1500:]}")
        say(f"issuance: {client}: account registered, first issuance (untimed) took {r.wall_ms:.0f} ms")

    def trial(self, client: str) -> IssuanceTrial:
        argv, env, chain = self.command(client)
        before = self.chain_fingerprint(chain)
        t = IssuanceTrial(client=client)
        pid = 0
        if client == "postmaster":
            pid = self.bed.main_pid("postmaster.service")
            try:
                self.bed.path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
            except OSError:
                pid = 0
        r = run_measured(self.bed, argv, env)
        t.t_start, t.t_end, t.rss_kib = r.t_start, r.t_end, r.maxrss_kib
        if pid:
            try:
                for line in self.bed.path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        t.daemon_hwm_kib = int(line.split()[1])
            except OSError:
                pass
        t.fingerprint = self.chain_fingerprint(chain)
        if r.rc != 0:
            t.error = f"exit {r.rc}: {(r.out + r.err).strip()[-300:]}"
        elif t.fingerprint is None or t.fingerprint == before:
            t.error = f"no new certificate in {chain}"
        elif client == "postmaster":
            v = self.status()["certificate"]
            if v["fingerprint"] != t.fingerprint or not (v.get("verified") or {}).get("ok"):
                t.error = f"the daemon does not serve the new certificate: {json.dumps(v)[:300]}"
        if not t.error:
            t.wall_ms = r.wall_ms
        return t

    def block(self, client: str) -> dict:
        self.warm_up(client)
        time.sleep(ISSUANCE_GAP_S)
        cpu = host_cpu_sample()
        t_block = time.time()
        trials = []
        for i in range(1, self.trials + 1):
            t = self.trial(client)
            trials.append(t)
            if t.error:
                say(f"issuance: {client} trial {i}: {t.error}")
            elif i % 5 == 0 or i == self.trials:
                say(f"issuance: {client}: {i}/{self.trials} trials, last {t.wall_ms:.0f} ms")
            time.sleep(ISSUANCE_GAP_S)
        busy = host_busy_pct(cpu, host_cpu_sample())

        # pebble's side of each trial; every message of the trial's window is its own.
        pebble = journal_events(self.bed, "pebble.service", t_block - 1)
        for t in trials:
            mine = [(ts, m) for ts, m in pebble if t.t_start <= ts <= t.t_end]
            orders = [ts for ts, m in mine if "POST /order-plz" in m]
            downloads = [ts for ts, m in mine if "POST /certZ/" in m]
            t.orders = len(orders)
            t.validations = sum(1 for _ts, m in mine if "set VALID by completed challenge" in m)
            if orders and downloads and t.wall_ms is not None:
                t.pebble_ms = (downloads[-1] - orders[0]) * 1000
        if client == "postmaster":
            daemon = journal_events(self.bed, "postmaster.service", t_block - 1)
            for t in trials:
                if t.wall_ms is None:
                    continue
                mine = [(ts, m) for ts, m in daemon if t.t_start <= ts <= t.t_end]
                installed = [ts for ts, m in mine if m == "certificate installed"]
                served = [ts for ts, m in mine if m == "new certificate served on every port"]
                obtained = [ts for ts, m in mine if m.startswith("obtained a certificate")]
                if installed:
                    t.installed_ms = (installed[0] - t.t_start) * 1000
                    if served:
                        t.served_ms = (served[-1] - installed[0]) * 1000
                if obtained:
                    t.reply_ms = (t.t_end - obtained[-1]) * 1000
        ok = [t for t in trials if t.wall_ms is not None]
        rss = [t.rss_kib for t in ok if t.rss_kib]
        hwm = [t.daemon_hwm_kib for t in ok if t.daemon_hwm_kib]
        return {
            "trials": [t.__dict__ for t in trials],
            "wall_ms": summary([t.wall_ms for t in trials]),
            "pebble_ms": summary([t.pebble_ms for t in ok if t.pebble_ms is not None]),
            "installed_ms": summary([t.installed_ms for t in ok if t.installed_ms is not None]),
            "served_ms": summary([t.served_ms for t in ok if t.served_ms is not None]),
            "reply_ms": summary([t.reply_ms for t in ok if t.reply_ms is not None]),
            "rss_mib_max": max(rss) / 1024 if rss else None,
            "rss_mib_p50": percentile(rss, 50) / 1024 if rss else None,
            "daemon_hwm_mib_max": max(hwm) / 1024 if hwm else None,
            "daemon_hwm_mib_p50": percentile(hwm, 50) / 1024 if hwm else None,
            "failed_trials": len(trials) - len(ok),
            "trials_not_one_order_one_validation": sum(1 for t in ok if t.orders != 1
                                                       or t.validations != len(self.names)),
            "host_busy_pct": busy,
        }

    def run(self) -> dict:
        self.check_no_authz_reuse()
        self.work = self.bed.run(["mktemp", "-d", "/root/postmaster-bench-XXXXXX"], check=True).stdout.strip()
        versions = {
            "certbot": self.bed.run(["certbot", "--version"]).stdout.strip(),
            "lego": self.bed.run(["dpkg-query", "-W", "-f", "${Version}", "lego"]).stdout.strip(),
            "pebble": self.bed.run(["dpkg-query", "-W", "-f", "${Version}", "pebble"]).stdout.strip(),
        }
        result: dict = {"names": self.names, "versions": versions, "clients": {}}
        t = time.monotonic()
        result["clients"]["postmaster"] = self.block("postmaster")
        result["clients"]["postmaster"]["phase_s"] = time.monotonic() - t
        try:
            self.without_socket()
            for client in ("certbot", "lego"):
                t = time.monotonic()
                result["clients"][client] = self.block(client)
                result["clients"][client]["phase_s"] = time.monotonic() - t
        finally:
            self.with_socket()
        # The daemon answers http-01 on port 80 again (untimed).
        r = run_measured(self.bed, ["postmaster", "renew", "--force"])
        result["renew_after_restore"] = {"rc": r.rc, "out": (r.out + r.err).strip()[-300:]}
        if r.rc != 0:
            say(f"issuance: postmaster renew failed after port 80 was given back: {(r.out + r.err).strip()[-300:]}")
        s = self.status()
        result["daemon_after"] = {"acme": s.get("acme"), "certificate_verified": s["certificate"].get("verified")}
        p50 = {c: (result["clients"][c]["wall_ms"] or {}).get("p50") for c in CLIENTS}
        pebble_p50 = {c: (result["clients"][c]["pebble_ms"] or {}).get("p50") for c in CLIENTS}
        result["ratios_p50"] = {
            f"{c}/postmaster": (p50[c] / p50["postmaster"]) if p50[c] and p50["postmaster"] else None
            for c in ("certbot", "lego")}
        result["ratios_pebble_p50"] = {
            f"{c}/postmaster": (pebble_p50[c] / pebble_p50["postmaster"])
            if pebble_p50[c] and pebble_p50["postmaster"] else None for c in ("certbot", "lego")}
        return result


def boot_bed(host: mailhost.MailHost, name: str, net: str) -> Bed:
    """Boots `host` as machine `name`; a unit that failed to start is an error."""
    bed = mailhost.boot(host, name=name, net=net)
    failed = bed.failed_units()
    if failed:
        bed.stop()
        raise BedError(f"units failed in the bed {name}: {failed}")
    return bed


def run_issuance(dir: Path, args) -> dict:
    """Boots the ACME bed, waits for its first certificate, runs the three blocks and
    tears the bed down."""
    host = mailhost.prepare_acme(dir, f"{args.issuance_net}.2")
    bed = None
    try:
        bed = boot_bed(host, args.issuance_name, args.issuance_net)
        say("issuance: waiting for the bed's first certificate from pebble")
        mailhost.wait_for_acme_certificate(host, timeout=120)
        return Issuance(host, bed, args.issuance_trials).run()
    except TimeoutError as e:
        raise BedError(str(e)) from None
    finally:
        if bed is not None:
            bed.stop()


# ---- signing: DKIM on the way out, and rspamd's memory ---------------------------------------

SIGNING_POLL_S = 0.002


def rspamd_memory(bed: Bed) -> dict:
    """RSS and PSS (MiB) summed over rspamd's processes (main and workers)."""
    return unit_memory(bed, "rspamd")


def submit_and_time(world, server, login, subject: str, timeout: float = 20.0) -> tuple[float, bytes]:
    """ms from the start of the submission on 587 to the message in the outside
    host's Maildir (watched on disk from here)."""
    maildir = world.bed.path("/home/someone/Maildir/new")
    before = set(os.listdir(maildir)) if maildir.is_dir() else set()
    t = time.monotonic()
    mc.submit(server, 587, *login, "thomas@example.org", ["someone@example.com"], subject)
    deadline = t + timeout
    while time.monotonic() < deadline:
        for name in (set(os.listdir(maildir)) if maildir.is_dir() else set()) - before:
            raw = (maildir / name).read_bytes()
            if subject.encode() in raw:
                return (time.monotonic() - t) * 1000, raw
        time.sleep(SIGNING_POLL_S)
    raise TimeoutError(f"{subject!r} not delivered at the outside host within {timeout:.0f} s")


@contextlib.contextmanager
def beside_the_world(host: mailhost.MailHost, args):
    """The mail host `host` booted beside an outside world of its own (DNS with the
    host's records as the baseline, the outside mail host), for the parts that need
    port 25's checks or DKIM verified outside; yields (world, bed) once rspamd's
    workers have settled, and stops both afterwards."""
    with outside_world.World(name=args.signing_name, net=args.signing_net) as world:
        bed = mailhost.boot(host, name=f"{args.signing_name}m", world=world)
        try:
            for zone, records in mailhost.dns_zones(host).items():
                if zone in world.zones:
                    world.set_baseline(zone, records)
            time.sleep(5)  # rspamd's workers settle after their start
            yield world, bed
        finally:
            bed.stop()


def run_signing(dir: Path, args) -> dict:
    """The mail host beside the outside world (tests/lib/world.py): `trials` mails
    from thomas to someone@example.com with signing on, then as many with postfix's
    milter off (submission_milters emptied and postfix reloaded), interleaved in
    blocks so that drift hits both alike; every signed one is checked to carry a
    DKIM-Signature. rspamd's memory at rest and after the trials."""
    host = mailhost.prepare(dir)
    login = ("thomas", mailhost.PASSWORDS["thomas"])
    result: dict = {"trials": args.trials}
    with beside_the_world(host, args) as (world, bed):
        server = mc.Server(address=host.ip, ca_file=str(host.ca.cert))
        result["rspamd_at_rest"] = rspamd_memory(bed)
        say(f"signing: rspamd at rest {result['rspamd_at_rest']['rss_mib']:.0f} MiB RSS")
        # One of each first, unmeasured: connections, caches, rspamd's first scan.
        submit_and_time(world, server, login, mc.unique_subject("warm-up signed"))
        samples: dict[str, list[float]] = {"signed": [], "unsigned": []}
        block = 5
        milter = bed.run(["postconf", "-h", "submission_milters"], check=True).stdout.strip()
        for start in range(0, args.trials, block):
            for mode in ("signed", "unsigned"):
                value = milter if mode == "signed" else ""
                bed.run(["postconf", "-e", f"submission_milters = {value}"], check=True)
                bed.run(["postfix", "reload"], check=True)
                time.sleep(1.5)  # the old smtpd processes go; the first new one starts
                for i in range(start, min(start + block, args.trials)):
                    ms, raw = submit_and_time(world, server, login, mc.unique_subject(f"{mode} {i}"))
                    signed = b"DKIM-Signature:" in raw
                    if signed != (mode == "signed"):
                        raise BedError(f"a {mode} trial arrived {'with' if signed else 'without'} a signature")
                    samples[mode].append(ms)
        bed.run(["postconf", "-e", f"submission_milters = {milter}"], check=True)
        bed.run(["postfix", "reload"], check=True)
        result["signed"] = summary(samples["signed"])
        result["unsigned"] = summary(samples["unsigned"])
        result["added_p50_ms"] = result["signed"]["p50"] - result["unsigned"]["p50"]
        result["added_p99_ms"] = result["signed"]["p99"] - result["unsigned"]["p99"]
        result["rspamd_after"] = rspamd_memory(bed)
        result["samples"] = samples
    return result


# ---- inbound: the checks of port 25, and rspamd's and valkey's memory ------------------------

INBOUND_BULK = 1000
INBOUND_LEARN = 200  # of each class, after the bulk: Bayes with something in it


def unit_memory(bed: Bed, process: str) -> dict:
    """RSS and PSS (MiB) summed over the processes named `process`."""
    out = bed.run(["sh", "-c", f"for p in $(pgrep -x {process}); do cat /proc/$p/smaps_rollup; done"],
                  check=True).stdout
    rss = sum(int(l.split()[1]) for l in out.splitlines() if l.startswith("Rss:")) / 1024
    pss = sum(int(l.split()[1]) for l in out.splitlines() if l.startswith("Pss:")) / 1024
    procs = len(bed.run(["pgrep", "-x", process]).stdout.split())
    return {"rss_mib": rss, "pss_mib": pss, "processes": procs}


def inbound_memory(bed: Bed) -> dict:
    used = bed.run(["valkey-cli", "info", "memory"], check=True).stdout
    dataset = re.search(r"used_memory:(\d+)", used)
    # unbound: the checks' own resolver ([inbound] resolver = "local"), whose cache
    # grows with the names the senders' SPF, DKIM and DMARC lookups ask about.
    return {"rspamd": unit_memory(bed, "rspamd"), "valkey": unit_memory(bed, "valkey-server"),
            "valkey_used_memory_mib": int(dataset[1]) / 1048576 if dataset else None,
            "unbound": unit_memory(bed, "unbound")}


def random_body(rng: random.Random, words: int = 120) -> str:
    """Prose-like text of made-up words: many distinct tokens, as real mail has."""
    vocabulary = "abcdefghijklmnopqrstuvwxyz"
    return " ".join("".join(rng.choice(vocabulary) for _ in range(rng.randint(3, 9)))
                    for _ in range(words)) + "\n"


def deliver_and_time(bed: Bed, server, subject: str, body: str, timeout: float = 20.0) -> float:
    """ms from the start of an SMTP session on port 25 (from this host, as another
    server: STARTTLS, no AUTH) to the message in thomas's Maildir."""
    maildir = bed.path("/var/vmail/thomas/Maildir/new")
    before = set(os.listdir(maildir)) if maildir.is_dir() else set()
    t = time.monotonic()
    refused = mc.send_inbound(server, "someone@example.com", ["thomas@example.org"], subject, body)
    if refused:
        raise BedError(f"port 25 refused {subject!r}: {refused}")
    deadline = t + timeout
    while time.monotonic() < deadline:
        for name in (set(os.listdir(maildir)) if maildir.is_dir() else set()) - before:
            if subject.encode() in (maildir / name).read_bytes():
                return (time.monotonic() - t) * 1000
        time.sleep(SIGNING_POLL_S)
    raise TimeoutError(f"{subject!r} not delivered within {timeout:.0f} s")


def run_inbound(dir: Path, args) -> dict:
    """The mail host beside the outside world: `trials` messages on port 25 with the
    checks on (rspamd as the smtp service's milter) and as many with them off
    (inbound_milters emptied, postfix reloaded), interleaved in blocks. Then
    INBOUND_BULK messages in one session, INBOUND_LEARN learned as spam and as many
    as ham, and rspamd's, valkey's and unbound's memory at rest, after the bulk and
    after learning."""
    host = mailhost.prepare(dir)
    rng = random.Random(13)
    result: dict = {"trials": args.trials, "bulk": INBOUND_BULK, "learned_each": INBOUND_LEARN}
    with beside_the_world(host, args) as (world, bed):
        server = mc.Server(address=host.ip, ca_file=str(host.ca.cert))
        result["at_rest"] = inbound_memory(bed)
        say(f"inbound: at rest rspamd {result['at_rest']['rspamd']['pss_mib']:.0f} MiB PSS, "
            f"valkey {result['at_rest']['valkey']['pss_mib']:.1f} MiB PSS, "
            f"unbound {result['at_rest']['unbound']['pss_mib']:.1f} MiB PSS")
        deliver_and_time(bed, server, mc.unique_subject("warm-up checked"), random_body(rng))
        samples: dict[str, list[float]] = {"checked": [], "unchecked": []}
        block = 5
        milter = bed.run(["postconf", "-h", "inbound_milters"], check=True).stdout.strip()
        for start in range(0, args.trials, block):
            for mode in ("checked", "unchecked"):
                bed.run(["postconf", "-e", f"inbound_milters = {milter if mode == 'checked' else ''}"],
                        check=True)
                bed.run(["postfix", "reload"], check=True)
                time.sleep(1.5)  # the old smtpd processes go; the first new one starts
                for i in range(start, min(start + block, args.trials)):
                    samples[mode].append(deliver_and_time(bed, server, mc.unique_subject(f"{mode} {i}"),
                                                          random_body(rng)))
        bed.run(["postconf", "-e", f"inbound_milters = {milter}"], check=True)
        bed.run(["postfix", "reload"], check=True)
        time.sleep(1.5)
        result["checked"] = summary(samples["checked"])
        result["unchecked"] = summary(samples["unchecked"])
        result["added_p50_ms"] = result["checked"]["p50"] - result["unchecked"]["p50"]
        result["added_p99_ms"] = result["checked"]["p99"] - result["unchecked"]["p99"]
        result["samples"] = samples

        maildir = bed.path("/var/vmail/thomas/Maildir/new")
        before = len(os.listdir(maildir))
        t = time.monotonic()
        with mc.smtp(server, 25, "starttls") as s:
            for i in range(INBOUND_BULK):
                msg = mc.make_message("someone@example.com", ["thomas@example.org"],
                                      f"bulk {i} {rng.getrandbits(48):x}", random_body(rng))
                s.send_message(msg)
        mc.wait_for(f"{INBOUND_BULK} bulk messages delivered",
                    lambda: len(os.listdir(maildir)) - before >= INBOUND_BULK, timeout=600, every=0.5)
        result["bulk_s"] = time.monotonic() - t
        result["after_bulk"] = inbound_memory(bed)
        files = sorted(os.listdir(maildir))[-2 * INBOUND_LEARN:]
        for cls, chunk in (("spam", files[:INBOUND_LEARN]), ("ham", files[INBOUND_LEARN:])):
            for k in range(0, len(chunk), 50):
                paths = [f"/var/vmail/thomas/Maildir/new/{f}" for f in chunk[k:k + 50]]
                bed.run(["rspamc", "--connect", "/run/rspamd-learn/controller.sock", f"learn_{cls}", *paths],
                        check=True, timeout=300)
        time.sleep(2)
        result["after_learning"] = inbound_memory(bed)
        result["rspamc_stat"] = bed.run(["rspamc", "--connect", "/run/rspamd-learn/controller.sock", "stat"],
                                        check=True).stdout.splitlines()[-3:]
    return result


def run_storm(dir: Path, args) -> dict:
    """tests/lib/storm.py for --storm-seconds: mail on 25 and 587 (two senders each,
    as fast as the host takes it), IMAPS logins, and every 3 s a reload of dovecot
    and postfix (a renewal), an accounts edit or `systemctl reload postmaster`. In
    a bed of its own beside the outside world (port 25's checks need its DNS)."""
    host = mailhost.prepare(dir)
    with beside_the_world(host, args) as (world, bed):
        return storm.run(host, seconds=args.storm_seconds, renewals_only=args.storm_renewals_only)


# ---- scale: a large accounts file, on the host ---------------------------------------------

SCALE_MAILBOXES = 10_000
SCALE_ALIASES = 100_000
SCALE_TRIALS = 5


def _run_measured(argv: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Runs argv; returns wall ms, its peak RSS in MiB (its largest process: postmaster
    or a postmap it waited for), and the result.

    The peak comes from GNU time, not from this process's wait4: a process forked
    from this one counts this one's RSS at its exec (the kernel keeps the old mm's
    high-water mark), and this one is at ~50 MiB by then, more than the target.
    time is small, so the command it forks starts near nothing."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r") as peak:
        t = time.monotonic()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", peak.name, *argv], stdout=out, stderr=err)
        ms = (time.monotonic() - t) * 1000
        out.seek(0)
        err.seek(0)
        kib = int(peak.read().split()[-1])
        return ms, kib / 1024, subprocess.CompletedProcess(argv, proc.returncode, out.read(), err.read())


def run_scale(dir: Path) -> dict:
    """10,000 mailboxes and 100,000 aliases: `postmaster check`, a first apply, then
    one line edited and applied again (the pipeline the daemon runs on every edit),
    beside bare `postmap lmdb:` of the same three maps, in one run. Each command's
    peak RSS is its own (see _run_measured)."""
    dir.mkdir(parents=True)
    binary = str(mailhost.binary())
    password = mailhost.hash_password("scale-password-1")
    lines = []
    for i in range(SCALE_MAILBOXES):
        lines += [f"[mailboxes.m{i}]", f'password = "{password}"', ""]
    lines.append("[aliases]")
    lines += [f'"a{i}@example.org" = "m{i % SCALE_MAILBOXES}"' for i in range(SCALE_ALIASES)]
    accounts = dir / "accounts.toml"
    text = "\n".join(lines) + "\n"
    accounts.write_text(text)
    config = dir / "config.toml"
    config.write_text(f"""host_name = "mail.example.org"
domains = ["example.org"]
accounts_file = "{accounts}"
state_dir = "{dir / 'state'}"
generated_dir = "{dir / 'generated'}"
[tls]
source = "files"
cert = "{dir / 'none' / 'fullchain.pem'}"
key = "{dir / 'none' / 'privkey.pem'}"
[postfix]
map_type = "lmdb"
[dkim]
# This part measures the accounts pipeline; signing keys are measured by "signing".
enabled = false
""")
    size_mib = accounts.stat().st_size / 2**20
    say(f"scale: {SCALE_MAILBOXES} mailboxes, {SCALE_ALIASES} aliases, {size_mib:.1f} MiB")
    check_ms, check_rss, res = _run_measured([binary, "--config", str(config), "check"])
    assert res.returncode == 0, res.stderr
    first_ms, first_rss, res = _run_measured([binary, "--config", str(config), "apply"])
    assert res.returncode == 0, res.stderr
    edit_ms, edit_rss, postmap_ms = [], [], []
    maps = sorted(p for p in (dir / "generated" / "postfix").iterdir() if p.suffix == "")
    for trial in range(SCALE_TRIALS):
        # One line edited: an alias goes to another mailbox.
        accounts.write_text(text.replace('"a7@example.org" = "m7"', f'"a7@example.org" = "m{100 + trial}"', 1))
        ms, rss, res = _run_measured([binary, "--config", str(config), "apply"])
        assert res.returncode == 0 and "written:" in res.stdout, res
        edit_ms.append(ms)
        edit_rss.append(rss)
        # Bare postmap of the same maps, side by side.
        bare = dir / "bare"
        bare.mkdir(exist_ok=True)
        t = time.monotonic()
        for m in maps:
            shutil.copyfile(m, bare / m.name)
            subprocess.run(["postmap", f"lmdb:{bare / m.name}"], check=True)
        postmap_ms.append((time.monotonic() - t) * 1000)
    return {
        "file_mib": size_mib, "maps": [m.name for m in maps],
        "check_ms": check_ms, "check_rss_mib": check_rss,
        "first_apply_ms": first_ms, "first_apply_rss_mib": first_rss,
        "edit_apply_ms": summary(edit_ms), "edit_apply_rss_mib": max(edit_rss),
        "bare_postmap_ms": summary(postmap_ms),
    }


# ---- report -------------------------------------------------------------------------------

def verdict(value: float | None, target: float) -> str:
    if value is None:
        return "n/a"
    return "ok" if value < target else "over"


def p99_verdict(s: dict | None, target: float) -> str:
    if s is None:
        return "n/a"
    return "over" if s["p99"] is None else verdict(s["p99"], target)


def print_scale(sc: dict) -> None:
    bare = sc["bare_postmap_ms"]["p50"]
    edit = sc["edit_apply_ms"]["p50"]
    limit_mib = 4 * sc["file_mib"]
    print(f"scale: {SCALE_MAILBOXES} mailboxes, {SCALE_ALIASES} aliases, {sc['file_mib']:.1f} MiB accounts file "
          f"(maps: {', '.join(sc['maps'])})")
    print(f"  {'postmaster check (ms, peak MiB)':50} {sc['check_ms']:>7.0f} {sc['check_rss_mib']:>7.1f}")
    print(f"  {'first apply (ms, peak MiB)':50} {sc['first_apply_ms']:>7.0f} {sc['first_apply_rss_mib']:>7.1f}")
    print(f"  {'one line edited -> applied, p50 (ms)':50} {edit:>7.0f}  <= 2 x bare postmap ({2 * bare:.0f} ms): "
          f"{verdict(edit, 2 * bare + 1e-9)}")
    print(f"  {'  bare postmap lmdb: of the same maps, p50 (ms)':50} {bare:>7.0f}")
    print(f"  {'  peak memory of that apply (MiB)':50} {sc['edit_apply_rss_mib']:>7.1f}  <= 4 x the file "
          f"({limit_mib:.1f} MiB): {verdict(sc['edit_apply_rss_mib'], limit_mib + 1e-9)}")


def print_report(r: dict) -> None:
    env = r["env"]
    print()
    print(f"postmaster bench  {env['started']}  {env['cpus']} CPUs  load {env['load_start']} -> {env['load_end']}")
    print(f"  other beds running: {', '.join(env['other_beds_start']) or 'none'} (start), "
          f"{', '.join(env['other_beds_end']) or 'none'} (end); host CPU busy: "
          + ", ".join(f"{k} {v:.0f}%" for k, v in env["host_busy_pct"].items()))
    print()
    hdr = f"{'':52} {'n':>3} {'min':>7} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}  target"
    print(hdr)

    def row(label: str, s: dict | None, target: str = "") -> None:
        if s is None:
            print(f"{label:52} {'-':>3}")
            return
        cells = " ".join(f"{'failed':>7}" if s[k] is None else f"{s[k]:>7.0f}"
                         for k in ("min", "p50", "p90", "p99", "max"))
        failed = f" ({s['failed']} trials failed)" if s.get("failed") else ""
        print(f"{label:52} {s['n']:>3} {cells}  {target}{failed}")

    for key, label in (("accounts", "idle server"), ("accounts_busy", "busy server")):
        a = r.get(key)
        if not a:
            continue
        s = a["login_ms"]
        t = TARGETS["accounts_p99_ms"]
        goal = f"p99 < {t:.0f} ms: {p99_verdict(s, t)}"
        if key == "accounts":
            t50 = TARGETS["accounts_idle_p50_ms"]
            goal += f"; p50 <= {t50:.0f} ms: {verdict(s['p50'] if s else None, t50 + 1e-9)}"
        row(f"accounts edit -> new login succeeds, {label} (ms)", s, goal)
        row("  rename -> daemon logged \"accounts applied\"", a["daemon_ms"])
        row("  rename -> user in dovecot's passwd-file", a["visible_ms"])
        if a.get("floor_ms"):
            row("  login of an existing mailbox, no edit (the floor)", a["floor_ms"])
        notes = [f"{a['failed_logins']} failed logins in {a['trials_with_failed_logins']} trials",
                 f"{a['extra_attempts']} extra attempts", f"{a['failed_trials']} failed trials",
                 f"{a['mailboxes_after']} mailboxes after"]
        if a.get("busy_logins"):
            notes.insert(0, f"{a['busy_logins']['ok']} background logins as thomas")
        print(f"  ({'; '.join(notes)})")
    if r.get("scale"):
        print_scale(r["scale"])
    st = r.get("storm")
    if st:
        print()
        print(f"reload storm, {st['seconds']:.0f} s ({st['disturbances']} renewals/edits/reloads; "
              f"{st.get('renewals_served', '?')} renewals served on every port "
              f"({st.get('renewals_not_served', '?')} not), {st.get('front_reloads', '?')} TLS front reloads, "
              f"{st.get('dovecot_reloads', '?')} dovecot reloads; target 0 for all but accepted):")
        print(f"  accepted {st['accepted']}  lost {st['lost']}  duplicated {st['duplicated']}  "
              f"deferred {st['deferred']} ({st.get('deferred_at_reload', '?')} of them a greeting lost at a reload, "
              f"{st.get('deferred_userdb_cut', '?')} a RCPT answered 451 4.3.0; "
              f"{st.get('relay_retries', '?')} greetings and {st.get('rcpt_saved', '?')} RCPTs saved by the LMTP "
              f"relay's retries, {st.get('rcpt_resent', '?')} RCPTs sent again, "
              f"{st.get('cut_lookups', '?')} user lookups dovecot's reloads cut)  "
              f"failed sessions {st['failed_sessions']}  "
              f"logins {st['logins']}  failed logins {st['failed_logins']}"
              + ("  (mail still queued at the end)" if st["still_queued"] else "")
              + (f"  ({st['failed_disturbances']} reloads/edits FAILED)" if st.get("failed_disturbances") else ""))
        if st.get("relay_cpu_s") is not None:
            print(f"  LMTP relay: {st['relay_cpu_s']:.2f} s CPU for {st['via_relay']} deliveries "
                  f"({1e3 * st['relay_cpu_s'] / max(1, st['via_relay']):.3f} ms each)")
        for e in st["errors"] + st["deferred_lines"] + st.get("cut_lines", []) + st.get("rcpt_lines", []):
            print(f"    {e}")
    sg = r.get("signing")
    if sg:
        t = TARGETS["signing_added_p50_ms"]
        row("submission on 587 -> delivered at the outside, signed (ms)", sg["signed"],
            f"added p50 {sg['added_p50_ms']:.1f} ms <= {t:.0f} ms: {verdict(sg['added_p50_ms'], t + 1e-9)}")
        row("  the same with the milter off, unsigned (ms)", sg["unsigned"])
        for when in ("rspamd_at_rest", "rspamd_after"):
            m = sg[when]
            print(f"  rspamd {'at rest' if when == 'rspamd_at_rest' else 'after the trials'}: "
                  f"{m['rss_mib']:.0f} MiB RSS, {m['pss_mib']:.0f} MiB PSS in {m['processes']} processes")
    ib = r.get("inbound")
    if ib:
        t = TARGETS["inbound_added_p50_ms"]
        row("port 25 -> delivered in INBOX, checked by rspamd (ms)", ib["checked"],
            f"added p50 {ib['added_p50_ms']:.1f} ms, p99 {ib['added_p99_ms']:.1f} ms; "
            f"p50 <= {t:.0f} ms: {verdict(ib['added_p50_ms'], t + 1e-9)}")
        row("  the same with the checks off (ms)", ib["unchecked"])
        print(f"  {ib['bulk']} messages in one session delivered in {ib['bulk_s']:.1f} s")
        for when, label in (("at_rest", "at rest"), ("after_bulk", f"after {ib['bulk']} messages"),
                            ("after_learning", f"after learning {ib['learned_each']} spam + {ib['learned_each']} ham")):
            m = ib[when]
            print(f"  {label}: rspamd {m['rspamd']['pss_mib']:.0f} MiB PSS ({m['rspamd']['rss_mib']:.0f} MiB RSS, "
                  f"{m['rspamd']['processes']} processes); valkey {m['valkey']['pss_mib']:.1f} MiB PSS "
                  f"({m['valkey']['rss_mib']:.1f} MiB RSS; data {m['valkey_used_memory_mib'] or 0:.1f} MiB); "
                  f"unbound {m['unbound']['pss_mib']:.1f} MiB PSS ({m['unbound']['rss_mib']:.1f} MiB RSS)")
    c = r.get("certificate")
    if c:
        s = c["both_ms"]
        t = TARGETS["certificate_p99_ms"]
        t50 = TARGETS["certificate_p50_ms"]
        row("certificate swap -> new leaf on 993 and 587 (ms)", s,
            f"p50 <= {t50:.0f} ms: {verdict(s['p50'] if s else None, t50 + 1e-9)}; p99 <= {t:.0f} ms: {p99_verdict(s, t + 1e-9)}")
        row("  ... and every later-started handshake too (stable)", c["stable_ms"])
        for p in CERT_PORTS:
            row(f"  on {p}", c["port_ms"][str(p)])
        row("  rename -> daemon logged \"certificate installed\"", c["daemon_installed_ms"])
        for unit, st in c["daemon_reloaded_ms"].items():
            row(f"  rename -> daemon logged \"reloaded\" {unit}", st)
        row("  daemon: \"served on every port after N ms\"", c["daemon_served_ms"])
        print(f"  ({c['trials_with_old_after_new']} trials had an old-leaf handshake end after the first new one "
              f"(by port: {', '.join(f'{p}: {n}' for p, n in c['old_after_new_by_port'].items())}; the longest "
              f"took {c['late_old_longest_ms']:.0f} ms); slowest handshake {c['slowest_handshake_ms']:.0f} ms; "
              f"{c['handshake_errors']} of {c['handshakes']} handshakes failed, {c['polls_skipped']} polls skipped "
              f"while {MAX_IN_FLIGHT} were under way; "
              f"{c['daemon_verify_failed']} daemon checks failed; {c['failed_trials']} failed trials)")
        print(f"  (trials with a handshake that took 1 s or more, by port: "
              f"{', '.join(f'{p}: {n}' for p, n in c['trials_with_stalls_by_port'].items())})")
        warnings = c.get("journal_warnings") or []
        if warnings:
            print(f"  warnings in the bed's journal meanwhile ({sum(n for n, _ in warnings)}; most frequent first):")
            for n, text in warnings[:5]:
                print(f"    {n:>4} x {text[:150]}")
    pids = r.get("pids")
    if pids:
        before, after = pids["before"], pids["after"]
        for unit in ("postfix.service", "dovecot.service", "postmaster.service", "postmaster-tls.service"):
            if unit not in before or unit not in after:
                continue
            same = before[unit] == after[unit]
            print(f"{unit + ' MainPID':52} {before[unit]} -> {after[unit]}: {'unchanged' if same else 'CHANGED'}")
    i = r.get("idle")
    if i:
        print()
        print(f"daemon at rest over {i['window_s']:.0f} s (pid {i['pid']}, {i['threads'][0]}->{i['threads'][1]} threads, "
              f"host CPU busy {i['host_busy_pct']:.0f}%):")
        print(f"  {'RSS (VmRSS, MiB)':50} {i['rss_mib']:>7.1f}  < {TARGETS['rss_mib']:.0f} MiB: "
              f"{verdict(i['rss_mib'], TARGETS['rss_mib'])}   (peak VmHWM {i['hwm_mib']:.1f} MiB)")
        cpu = round(i["cpu_ms_per_min"], 2)
        sched = round(i["cpu_ms_per_min_schedstat"], 2)
        target = TARGETS["idle_cpu_ms_per_min"]
        print(f"  {'CPU, utime+stime (ms per minute)':50} {cpu:>7.2f}  < {target:.0f} ms/min: {verdict(cpu, target)}"
              f"   ({i['cpu_ticks']} ticks of {1000 / i['clk_tck']:.0f} ms: sampled, coarse)")
        print(f"  {'CPU, threads run time by schedstat (ms per minute)':50} {sched:>7.2f}  < {target:.0f} ms/min: "
              f"{verdict(sched, target)}   (exact, threads alive at the end; {i['threads_gone']} ended meanwhile)")
        if i["pid_after"] != i["pid"]:
            print(f"  the daemon's PID changed during the window: {i['pid']} -> {i['pid_after']}")
    iss = r.get("issuance")
    if iss:
        cl = iss["clients"]
        print()
        print(f"issuance against pebble {iss['versions']['pebble']} in the bed (ms, wall time of the command run in "
              f"the bed; account registered beforehand; each trial one new order for {', '.join(iss['names'])}, "
              "http-01 on port 80, finalize, download):")
        labels = {
            "postmaster": "postmaster renew --force: obtain+install+verify",
            "certbot": f"certbot {iss['versions']['certbot'].split()[-1]} certonly --standalone: obtain+write",
            "lego": f"lego {iss['versions']['lego'].split('-')[0]} run --http: obtain+write",
        }
        for client in CLIENTS:
            c = cl.get(client)
            if not c:
                continue
            ours = client == "postmaster"
            p50 = lambda s: (s or {}).get("p50")  # noqa: E731
            row(labels[client], c["wall_ms"],
                f"p50 <= {TARGETS['issuance_command_p50_ms']:.0f}: "
                f"{verdict(p50(c['wall_ms']), TARGETS['issuance_command_p50_ms'])}" if ours else "")
            if ours:
                row("  start -> daemon logged \"certificate installed\"", c["installed_ms"])
                row("  \"installed\" -> \"served on every port\"", c["served_ms"])
                row("  \"served on every port\" -> command exited", c["reply_ms"])
            row("  pebble logged: new order -> certificate download", c["pebble_ms"],
                f"p50 <= {TARGETS['issuance_span_p50_ms']:.0f}: "
                f"{verdict(p50(c['pebble_ms']), TARGETS['issuance_span_p50_ms'])}" if ours else "")
        ratio = lambda x: "n/a" if x is None else f"{x:.2f}x"  # noqa: E731
        rp, rpp = iss["ratios_p50"], iss["ratios_pebble_p50"]
        print(f"  ratio of p50s: certbot/postmaster {ratio(rp['certbot/postmaster'])}, lego/postmaster "
              f"{ratio(rp['lego/postmaster'])} (pebble's order -> download span: "
              f"{ratio(rpp['certbot/postmaster'])}, {ratio(rpp['lego/postmaster'])})")
        mib = lambda x: "n/a" if x is None else f"{x:.1f}"  # noqa: E731
        pm = cl.get("postmaster", {})
        print(f"  peak RSS, MiB, p50/max of the trials: postmaster daemon "
              f"{mib(pm.get('daemon_hwm_mib_p50'))}/{mib(pm.get('daemon_hwm_mib_max'))} (VmHWM, reset before each "
              f"trial; the `postmaster renew` CLI {mib(pm.get('rss_mib_p50'))}/{mib(pm.get('rss_mib_max'))}), "
              + ", ".join(f"{c} {mib(cl[c]['rss_mib_p50'])}/{mib(cl[c]['rss_mib_max'])}"
                          for c in ("certbot", "lego") if c in cl)
              + " (ru_maxrss of the command's largest process)")
        print("  (" + "; ".join(
            f"{c}: {cl[c]['failed_trials']} failed trials, {cl[c]['trials_not_one_order_one_validation']} without "
            f"exactly one order and one http-01 validation by pebble, host CPU busy {cl[c]['host_busy_pct']:.0f}%"
            for c in CLIENTS if c in cl) + ")")
        after = iss.get("renew_after_restore") or {}
        if after.get("rc"):
            print(f"  postmaster renew --force FAILED after port 80 was given back to the socket: {after.get('out')}")
        print("  postmaster's figure includes installing the pair, reloading, verifying it on 7 ports and the "
              "D-Bus round trip; certbot's and lego's only obtaining it and writing their files. All include "
              "starting the process (and nsenter).")
    print()
    print("ms of wall time from the rename (accounts), the first symlink swap (certificate) or the command's start "
          "(issuance); p99 of 30 samples or fewer is in effect the worst one.")


# ---- main -------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description="postmaster's latencies, memory and idle CPU, and its ACME "
                                             "issuance beside certbot and lego, measured in the test bed")
    ap.add_argument("--trials", type=int, default=30, help="trials of each kind (default 30)")
    ap.add_argument("--cert-trials", type=int, default=None, help="certificate trials (default: --trials)")
    ap.add_argument("--idle-seconds", type=float, default=60.0, help="idle window (default 60)")
    ap.add_argument("--confirm-ms", type=float, default=300.0,
                    help="keep polling this long after both ports show the new leaf (default 300)")
    ap.add_argument("--trial-timeout", type=float, default=15.0,
                    help="give a trial up after this many s (default 15, the daemon's own deadline)")
    ap.add_argument("--issuance-trials", type=int, default=10,
                    help="issuance trials per client (default 10)")
    ap.add_argument("--only", default=",".join(PARTS),
                    help=f"comma-separated parts to run (default: all of {', '.join(PARTS)}); busy: the accounts "
                         "trials again with a login as thomas every 100 ms; issuance: `postmaster renew --force` "
                         "beside certbot and lego against pebble, in a bed of its own (--issuance-name/-net), "
                         "booted only for it")
    ap.add_argument("--json", metavar="FILE", help="also write every figure and sample as JSON")
    ap.add_argument("--name", default="pmbench", help="bed machine name (default pmbench)")
    ap.add_argument("--net", default="10.231.6", help="bed network, first three octets (default 10.231.6)")
    ap.add_argument("--signing-name", default="pmbsign", help="machine name of the outside world for "
                    "the signing part (its mail host gets this name + 'm'; default pmbsign)")
    ap.add_argument("--storm-seconds", type=float, default=60, help="how long the storm part runs (default 60)")
    ap.add_argument("--storm-renewals-only", action="store_true",
                    help="every disturbance of the storm a renewal: a new certificate every 3 s")
    ap.add_argument("--signing-net", default="10.231.9", help="the signing part's network (default 10.231.9)")
    ap.add_argument("--issuance-name", default="pmbiss", help="machine name of the ACME bed (default pmbiss)")
    ap.add_argument("--issuance-net", default="10.231.8",
                    help="network of the ACME bed, first three octets (default 10.231.8)")
    args = ap.parse_args()
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - set(PARTS)
    if unknown:
        ap.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if args.trials < 1 or (args.cert_trials is not None and args.cert_trials < 1):
        ap.error("--trials must be at least 1")
    if args.issuance_trials < 1:
        ap.error("--issuance-trials must be at least 1")
    if os.geteuid() != 0:
        print("bench: needs root (the test bed uses systemd-nspawn)", file=sys.stderr)
        return 2

    report: dict = {"env": {
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpus": os.cpu_count(),
        "load_start": loadavg(),
        "other_beds_start": other_beds(args.name),
        "host_busy_pct": {},
        "phase_s": {},
        "args": vars(args),
    }, "targets": TARGETS}
    t_start = time.monotonic()
    main_parts = parts - {"inbound", "issuance", "scale", "signing", "storm"}
    with tempfile.TemporaryDirectory(prefix="postmaster-bench-") as tmp:
        if main_parts:
            host = mailhost.prepare(Path(tmp) / "bed")
            # Everything a trial needs is made first: hashing and issuing are not measured.
            n_cert = args.cert_trials or args.trials
            say(f"making {args.trials} password hashes per accounts series and {n_cert} certificates (not timed)")
            users = make_users("bench", args.trials) if "accounts" in parts else []
            busy_users = make_users("busy", args.trials) if "busy" in parts else []
            pairs = make_pairs(host, n_cert) if "certificate" in parts else []
            bed = None
            bench = None
            try:
                bed = boot_bed(host, args.name, args.net)
                bench = Bench(host, bed, args)
                bench.add_sources()
                bench.wait_status("the daemon's first apply", lambda s: s["accounts"]["applied"] is not None)
                report["pids"] = {"before": bench.main_pids()}
                phases = [
                    ("accounts", "accounts", lambda: run_accounts(bench, users, busy=False)),
                    ("busy", "accounts_busy", lambda: run_accounts(bench, busy_users, busy=True)),
                    ("certificate", "certificate", lambda: run_certificates(bench, pairs)),
                ]
                for part, key, run in phases:
                    if part not in parts:
                        continue
                    cpu, t = host_cpu_sample(), time.monotonic()
                    report[key] = run()
                    report["env"]["host_busy_pct"][part] = host_busy_pct(cpu, host_cpu_sample())
                    report["env"]["phase_s"][part] = time.monotonic() - t
                report["pids"]["after"] = bench.main_pids()
                if "idle" in parts:
                    t = time.monotonic()
                    report["idle"] = run_idle(bench, args.idle_seconds)
                    report["env"]["host_busy_pct"]["idle"] = report["idle"]["host_busy_pct"]
                    report["env"]["phase_s"]["idle"] = time.monotonic() - t
                report["status_after"] = bench.status()
            finally:
                if bench is not None:
                    bench.remove_sources()
                if bed is not None:
                    bed.stop()
        if "scale" in parts:
            t = time.monotonic()
            report["scale"] = run_scale(Path(tmp) / "scale")
            report["env"]["phase_s"]["scale"] = time.monotonic() - t
        if "signing" in parts:
            cpu, t = host_cpu_sample(), time.monotonic()
            report["signing"] = run_signing(Path(tmp) / "signing", args)
            report["env"]["host_busy_pct"]["signing"] = host_busy_pct(cpu, host_cpu_sample())
            report["env"]["phase_s"]["signing"] = time.monotonic() - t
        if "inbound" in parts:
            cpu, t = host_cpu_sample(), time.monotonic()
            report["inbound"] = run_inbound(Path(tmp) / "inbound", args)
            report["env"]["host_busy_pct"]["inbound"] = host_busy_pct(cpu, host_cpu_sample())
            report["env"]["phase_s"]["inbound"] = time.monotonic() - t
        if "storm" in parts:
            cpu, t = host_cpu_sample(), time.monotonic()
            report["storm"] = run_storm(Path(tmp) / "storm", args)
            report["env"]["host_busy_pct"]["storm"] = host_busy_pct(cpu, host_cpu_sample())
            report["env"]["phase_s"]["storm"] = time.monotonic() - t
        if "issuance" in parts:
            cpu, t = host_cpu_sample(), time.monotonic()
            report["issuance"] = run_issuance(Path(tmp) / "issuance", args)
            report["env"]["host_busy_pct"]["issuance"] = host_busy_pct(cpu, host_cpu_sample())
            report["env"]["phase_s"]["issuance"] = time.monotonic() - t
    report["env"]["load_end"] = loadavg()
    report["env"]["other_beds_end"] = other_beds(args.name)
    report["env"]["duration_s"] = time.monotonic() - t_start
    print_report(report)
    print(f"(bench took {report['env']['duration_s']:.0f} s: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in report["env"]["phase_s"].items()) + ")")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
    except (BedError, OSError, ValueError, KeyError, json.JSONDecodeError, subprocess.SubprocessError) as e:
        print(f"bench: could not run: {e}", file=sys.stderr)
        sys.exit(1)
