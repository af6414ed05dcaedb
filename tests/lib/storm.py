"""A reload storm: mail on 25 and 587 and IMAPS logins while the certificate is
renewed (a new pair written where the daemon reads it, as certbot does: the daemon
validates and installs it, reloads the TLS front and makes postfix take it), the
accounts file is edited and postmaster itself is reloaded, every few seconds.
Counts what a user would notice: accepted, lost, duplicated, deferred, failed
sessions and failed logins; and how often dovecot, the front and postfix reloaded.

Shared by ./bench (--only storm) and tests/scenarios/test_storm.py.
"""

from __future__ import annotations

import imaplib
import itertools
import re
import smtplib
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field

import mailhost

MAILBOX = "thomas"

# A dovecot reload unlinks and recreates every unix listener, LMTP's
# private/dovecot-lmtp included (src/master/service-listen.c, listener_equals():
# "always unlink and recreate unix/fifo listeners"). A connection postfix made to the
# old socket that no process accepted yet died with that socket: postfix lost it
# before the greeting and deferred the mail (delivered at its next try). postfix now
# delivers to private/postmaster-lmtp, which systemd holds, and `postmaster
# lmtp-relay` behind it tries again until dovecot greets: neither socket's name may
# show up here any more.
SOCKET_REPLACED = re.compile(r"status=deferred \(lost connection with \S*\[private/(?:dovecot|postmaster)-lmtp\] "
                             r"while receiving the initial server greeting\)")
# A reload also cuts lmtp's user lookups (dovecot logs "auth-master: userdb
# lookup(...): Disconnected unexpectedly") and lmtp answers the RCPT with
# "451 4.3.0 ... Temporary internal error". postfix deferred that recipient; the relay
# now sends such a RCPT again (supervisor/src/lmtp_relay/dialogue.rs), so a deferral
# of this kind means its tries ran out.
USERDB_CUT = re.compile(r"status=deferred \(host \S*\[private/postmaster-lmtp\] said: 451 4\.3\.0 .*"
                        r"\(in reply to RCPT TO command\)\)")
USERDB_CUT_EVIDENCE = re.compile(r"auth-master: userdb lookup\(.*\): Disconnected unexpectedly")
# The relay's line for a delivery it saved that way (supervisor/src/lmtp_relay.rs).
RELAY_RETRIED = "dovecot's LMTP socket was being replaced: greeted at try"
# The relay's lines for a RCPT it sent again, and for one then accepted: each of
# those a deferral without it (supervisor/src/lmtp_relay.rs).
RCPT_RESENT = "RCPT TO sent again after an internal error"
RCPT_SAVED = "RCPT TO accepted at try"
# The relay's line for a connection whose dialogue it stopped following.
UNFOLLOWED = "LMTP dialogue no longer followed"


@dataclass
class Counts:
    accepted: int = 0
    failed_sessions: int = 0
    logins: int = 0
    failed_logins: int = 0
    disturbances: int = 0
    failed_disturbances: int = 0
    errors: list[str] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, what: str, e: BaseException | str) -> None:
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(f"{what}: {e}")


def _context(host: mailhost.MailHost) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(host.ca.cert))
    # Reached by address; the certificate is still checked against the bed's CA.
    ctx.check_hostname = False
    return ctx


def _sender(host, port: int, run: str, stop: threading.Event, counts: Counts, serial) -> None:
    ctx = _context(host)
    while not stop.is_set():
        n = next(serial)
        token = f"storm-{run}-{n}"
        msg = (f"From: {'someone@elsewhere.example' if port == 25 else 'thomas@example.org'}\r\n"
               f"To: {MAILBOX}@example.org\r\nSubject: {token}\r\nMessage-ID: <{token}@storm>\r\n\r\n{token}\r\n")
        try:
            with smtplib.SMTP(host.ip, port, timeout=30) as s:
                s.starttls(context=ctx)
                if port == 587:
                    s.login(MAILBOX, mailhost.PASSWORDS[MAILBOX])
                sender = "someone@elsewhere.example" if port == 25 else "thomas@example.org"
                s.sendmail(sender, [f"{MAILBOX}@example.org"], msg)
            with counts.lock:
                counts.accepted += 1
                counts.tokens.add(token)
        except Exception as e:  # any refusal or broken session is what we count
            with counts.lock:
                counts.failed_sessions += 1
            counts.fail(f"port {port}", e)
            time.sleep(0.2)


def _logins(host, stop: threading.Event, counts: Counts) -> None:
    ctx = _context(host)
    while not stop.is_set():
        try:
            c = imaplib.IMAP4_SSL(host.ip, 993, ssl_context=ctx, timeout=30)
            c.login("anna", mailhost.PASSWORDS["anna"])
            c.select("INBOX")
            c.logout()
            with counts.lock:
                counts.logins += 1
        except Exception as e:
            with counts.lock:
                counts.failed_logins += 1
            counts.fail("imaps login", e)
            time.sleep(0.2)
        time.sleep(0.05)


def _pairs(host) -> list[tuple[str, str]]:
    """Two pairs for the host from the bed's CA, (chain, key) each: a renewal installs
    the one not served, so each is a new certificate to the daemon."""
    return [mailhost.new_pair(host, "storm", stem)[:2] for stem in ("storm-a", "storm-b")]


def _disturb(host, every: float, stop: threading.Event, counts: Counts, renewals_only: bool) -> None:
    bed = host.bed
    pairs = _pairs(host)
    added: str | None = None
    for i in itertools.count():
        if stop.wait(every):
            break
        step = 0 if renewals_only else i
        try:
            _disturb_once(host, step, pairs[i % 2], added)
            if step % 3 == 1:
                added = f"storm{i}"
        except Exception as e:  # a reload that fails is a finding too, not a silent stop
            with counts.lock:
                counts.failed_disturbances += 1
            counts.fail("disturbance", e)
            continue
        with counts.lock:
            counts.disturbances += 1
    if added:
        bed.run(["postmaster", "mailbox", "remove", added], timeout=60, check=True)


def _disturb_once(host, i: int, pair: tuple[str, str], added: str | None) -> None:
    bed = host.bed
    step = i % 3
    if step == 0:
        # A renewal, as certbot writes it (the key, then the chain); the daemon does
        # the rest, as it would for any new certificate.
        mailhost.install_pair(host, *pair)
    elif step == 1:
        # An accounts edit: a mailbox added, the one added before removed, so the
        # accounts file ends as it began (the bed is shared with other tests).
        name = f"storm{i}"
        bed.run(["postmaster", "mailbox", "add", name], input=f"{name}-secret-1\n", timeout=60, check=True)
        if added:
            bed.run(["postmaster", "mailbox", "remove", added], timeout=60, check=True)
    else:
        bed.run(["systemctl", "reload", "postmaster.service"], timeout=60, check=True)


def relay_log(host: mailhost.MailHost, since: str) -> list[str]:
    """The LMTP relay's journal lines since `since`."""
    return host.bed.run(["journalctl", "--no-pager", "-q", "--since", since, "-u", "postmaster-lmtp.service"],
                        timeout=60).stdout.splitlines()


def run(host: mailhost.MailHost, seconds: float, senders_per_port: int = 2, every: float = 3.0,
        settle: float = 90.0, renewals_only: bool = False) -> dict:
    """Runs the storm for `seconds`, waits for the queue to empty (at most `settle`),
    and returns the counts. `renewals_only`: every disturbance a renewal (a new
    certificate every `every` seconds), no accounts edit or postmaster reload."""
    run_id = uuid.uuid4().hex[:8]
    started = time.time()
    stop = threading.Event()
    counts = Counts()
    serial = itertools.count()
    threads = [threading.Thread(target=_sender, args=(host, port, run_id, stop, counts, serial))
               for port in (25, 587) for _ in range(senders_per_port)]
    threads.append(threading.Thread(target=_logins, args=(host, stop, counts)))
    threads.append(threading.Thread(target=_disturb, args=(host, every, stop, counts, renewals_only)))
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=120)

    # Everything accepted must reach the mailbox exactly once. What postfix deferred
    # is counted as deferred (from the journal); then the queue is flushed (deferred
    # mail, and queue files a reloaded qmgr left "still being delivered") so that
    # "lost" means only what never arrives.
    deadline = time.monotonic() + settle
    drained = False
    while time.monotonic() < deadline:
        if not host.bed.run(["postqueue", "-j"]).stdout.strip():
            drained = True
            break
        host.bed.run(["postqueue", "-f"], check=True)
        time.sleep(2)
    # The messages themselves (new/ and cur/ of every folder: port 25's mail from an
    # unknown sender may be filed into Junk), not dovecot's index and cache files,
    # which hold copies of their headers.
    maildir = f"/var/vmail/{MAILBOX}/Maildir"
    out = host.bed.run(["sh", "-c", f"find {maildir} -type f \\( -path '*/new/*' -o -path '*/cur/*' \\) -print0"
                        f" | xargs -0 -r grep -hoa 'Message-ID: <storm-{run_id}-[0-9]*@'"],
                       timeout=120).stdout
    seen: dict[str, int] = {}
    for token in re.findall(rf"storm-{run_id}-\d+", out):
        seen[token] = seen.get(token, 0) + 1
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started - 1))
    # The whole journal, not `-u postfix.service`: on Debian that unit is a oneshot
    # wrapper and postfix's daemons log from postfix@-.service.
    journal = host.bed.run(["journalctl", "--no-pager", "-q", "--since", since, "SYSLOG_FACILITY=2"],
                           timeout=60).stdout
    deferred = [line for line in journal.splitlines() if "status=deferred" in line]
    # Deliveries into dovecot, and which socket postfix gave each to: the relay's
    # (postmaster-lmtp), or dovecot's own, which a reload replaces under it.
    lmtp_sent = [line for line in journal.splitlines() if "/lmtp[" in line and "status=sent" in line]
    via_relay = sum("[private/postmaster-lmtp]" in line for line in lmtp_sent)
    # Deferrals of the one kind a dovecot reload causes (see SOCKET_REPLACED).
    at_reload = [line for line in deferred if SOCKET_REPLACED.search(line)]
    # Deferrals of the kind no relay can prevent (see USERDB_CUT), counted only with
    # dovecot's own line for the cut lookup beside them.
    userdb_cut = [line for line in deferred if USERDB_CUT.search(line)]
    cut_lookups = sum(bool(USERDB_CUT_EVIDENCE.search(line)) for line in journal.splitlines())
    # What the daemons say about sessions a reload cut, for the reader of a failure.
    cut = [line for line in journal.splitlines() if any(
        what in line for what in ("Auth server restarted", "Server shutting down", "while receiving the initial",
                                  "Internal login failure", "Login aborted", "Disconnected unexpectedly"))]
    relayed = relay_log(host, since)
    front = host.bed.run(["journalctl", "--no-pager", "-q", "--since", since, "-u", "postmaster-tls.service"],
                         timeout=60).stdout.splitlines()
    daemon = host.bed.run(["journalctl", "--no-pager", "-q", "--since", since, "-u", "postmaster.service"],
                          timeout=60).stdout.splitlines()
    # The relay's CPU time since it started (at the boot's first delivery): what
    # following the dialogue costs, beside the deliveries it carried.
    # (/proc: systemd's CPUUsageNSec needs cgroup accounting that a bed may lack.)
    stat = host.bed.run(["sh", "-c", "cat /proc/$(systemctl show -P MainPID postmaster-lmtp.service)/stat; "
                         "getconf CLK_TCK"], timeout=60).stdout.split()
    # utime and stime are fields 14 and 15, after the parenthesised name.
    cpu_s = None
    if len(stat) > 15 and stat[1].endswith(")"):
        cpu_s = (int(stat[13]) + int(stat[14])) / int(stat[-1])
    return {
        "seconds": seconds,
        "accepted": counts.accepted,
        "lost": len(counts.tokens - seen.keys()),
        "duplicated": sum(n - 1 for n in seen.values() if n > 1),
        "deferred": len(deferred),
        "deferred_at_reload": len(at_reload),
        # Deferrals for a RCPT answered 451 4.3.0 that the relay's tries did not save.
        "deferred_userdb_cut": len(userdb_cut),
        "cut_lookups": cut_lookups,
        "failed_sessions": counts.failed_sessions,
        "logins": counts.logins,
        "failed_logins": counts.failed_logins,
        "disturbances": counts.disturbances,
        "failed_disturbances": counts.failed_disturbances,
        "via_relay": via_relay,
        "around_relay": len(lmtp_sent) - via_relay,
        "relay_retries": sum(RELAY_RETRIED in line for line in relayed),
        "rcpt_resent": sum(RCPT_RESENT in line for line in relayed),
        "rcpt_saved": sum(RCPT_SAVED in line for line in relayed),
        "relay_unfollowed": sum(UNFOLLOWED in line for line in relayed),
        "relay_cpu_s": cpu_s,
        "dovecot_reloads": sum("SIGHUP received - reloading configuration" in line for line in journal.splitlines()),
        # The front read a pair (at each renewal's reload), and the daemon saw a new
        # certificate served on every port (the renewal done).
        "front_reloads": sum("serving the certificate" in line for line in front),
        "renewals_served": sum("new certificate served on every port" in line for line in daemon),
        "renewals_not_served": sum("the new certificate is not served everywhere" in line for line in daemon),
        "still_queued": not drained,
        "errors": counts.errors[:10],
        "deferred_lines": deferred[:10],
        "cut_lines": [line for line in cut if "status=deferred" not in line][:10],
        "rcpt_lines": [line for line in relayed if RCPT_RESENT in line or RCPT_SAVED in line
                       or UNFOLLOWED in line or "RCPT TO still answered" in line][:10],
    }
