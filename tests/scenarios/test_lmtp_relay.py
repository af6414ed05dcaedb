"""postfix's deliveries reach dovecot through postmaster-lmtp.socket, which systemd
holds, and `postmaster lmtp-relay` behind it (units/postmaster-lmtp.*): a dovecot
reload replaces dovecot's own LMTP socket, and a delivery that had just connected to
the old one was deferred. Here: the path is the relay's and only postfix can reach
it; a delivery made while dovecot is down waits for dovecot instead of being
deferred (without the relay postfix defers it: the test fails when postfix delivers
to dovecot's socket directly); a restart of the relay refuses no delivery."""

from __future__ import annotations

import re
import threading
import time

import mailclient as mc

OUTSIDE = "someone@elsewhere.example"
RETRIED = "dovecot's LMTP socket was being replaced: greeted at try"
# The relay's lines for a RCPT sent again and for one then accepted, and for a
# connection it stopped following (supervisor/src/lmtp_relay.rs).
RCPT_RESENT = "RCPT TO sent again after an internal error"
RCPT_SAVED = "RCPT TO accepted at try"
UNFOLLOWED = "LMTP dialogue no longer followed"


def since(bed) -> str:
    """The bed's clock now, for journalctl --since (a second back: its resolution)."""
    return bed.run(["date", "-d", "-1 second", "+%Y-%m-%d %H:%M:%S"], check=True).stdout.strip()


def mail_log(bed, start: str) -> str:
    # postfix's daemons log from postfix@-.service on Debian: the mail facility.
    return bed.run(["journalctl", "--no-pager", "-q", "--since", start, "SYSLOG_FACILITY=2"],
                   check=True).stdout


def relay_log(bed, start: str) -> str:
    return bed.run(["journalctl", "--no-pager", "-q", "--since", start, "-u", "postmaster-lmtp.service"],
                   check=True).stdout


def delivered(bed, start: str, count: int) -> list[str]:
    sent = [line for line in mail_log(bed, start).splitlines() if "status=sent" in line and "/lmtp[" in line]
    return sent if len(sent) >= count else []


def test_postfix_delivers_through_the_relay_which_only_postfix_reaches(host, server, anna):
    bed = host.bed
    start = since(bed)
    subject = mc.unique_subject("through the relay")
    assert mc.send_inbound(server, OUTSIDE, ["anna@example.net"], subject) == {}
    mc.imap_find(server, *anna, subject)
    sent = mc.wait_for("postfix's log of the delivery", lambda: delivered(bed, start, 1))
    assert all("[private/postmaster-lmtp]" in line for line in sent), sent
    # The relay followed postfix and dovecot's dialogue to its end: nothing in it
    # (an extension dovecot offers, a command postfix sends) made it stop.
    assert UNFOLLOWED not in relay_log(bed, start), relay_log(bed, start)
    # The socket: postfix's alone, as dovecot's is; the relay runs as postfix.
    for sock in ("postmaster-lmtp", "dovecot-lmtp"):
        mode = bed.run(["stat", "-c", "%F %U %G %a", f"/var/spool/postfix/private/{sock}"], check=True).stdout
        assert mode.split() == ["socket", "postfix", "postfix", "600"], (sock, mode)
    assert bed.is_active("postmaster-lmtp.socket") and bed.is_active("postmaster-lmtp.service")
    user = bed.systemctl("show", "-P", "User", "postmaster-lmtp.service").strip()
    pid = bed.systemctl("show", "-P", "MainPID", "postmaster-lmtp.service").strip()
    owner = bed.run(["ps", "-o", "user=", "-p", pid], check=True).stdout.strip()
    assert (user, owner) == ("postfix", "postfix"), (user, owner)
    assert bed.run(["systemctl", "is-enabled", "postmaster-lmtp.socket"]).stdout.strip() == "enabled"


def test_a_delivery_while_dovecot_is_down_waits_for_it_instead_of_being_deferred(host, server, anna):
    bed = host.bed
    start = since(bed)
    bed.systemctl("stop", "dovecot.service")
    try:
        subject = mc.unique_subject("while dovecot is down")
        # Port 25 needs nothing of dovecot to accept it (no AUTH).
        assert mc.send_inbound(server, OUTSIDE, ["anna@example.net"], subject) == {}
        # postfix hands it on at once; without the relay its connect fails now.
        time.sleep(3)
    finally:
        bed.systemctl("start", "dovecot.service")
    mc.imap_find(server, *anna, subject)
    sent = mc.wait_for("postfix's log of the delivery", lambda: delivered(bed, start, 1))
    log = mail_log(bed, start)
    assert "status=deferred" not in log, [line for line in log.splitlines() if "status=deferred" in line]
    assert all("[private/postmaster-lmtp]" in line for line in sent), sent
    # It was the relay's waiting: it tried until dovecot answered, seconds later.
    tries = [int(n) for n in re.findall(rf"{RETRIED} (\d+)", relay_log(bed, start))]
    assert tries and max(tries) > 5, relay_log(bed, start)


def test_a_restart_of_the_relay_refuses_no_delivery(host, server, thomas):
    """systemd keeps the socket while the relay restarts: what connects meanwhile
    waits in it, and the old relay lets the deliveries it serves finish."""
    bed = host.bed
    start = since(bed)
    before = bed.systemctl("show", "-P", "MainPID", "postmaster-lmtp.service").strip()
    subjects: list[str] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def send():
        while not stop.is_set():
            subject = mc.unique_subject("across a relay restart")
            try:
                assert mc.send_inbound(server, OUTSIDE, ["thomas@example.org"], subject) == {}
                subjects.append(subject)
            except Exception as e:  # counted: no session may fail
                errors.append(e)

    senders = [threading.Thread(target=send) for _ in range(2)]
    for t in senders:
        t.start()
    try:
        time.sleep(2)
        for _ in range(3):
            bed.systemctl("restart", "postmaster-lmtp.service")
            time.sleep(1)
    finally:
        stop.set()
        for t in senders:
            t.join(timeout=60)
    after = bed.systemctl("show", "-P", "MainPID", "postmaster-lmtp.service").strip()
    assert before != after, "the relay was not restarted"
    assert not errors, errors
    assert len(subjects) >= 10, subjects
    mc.wait_for(f"{len(subjects)} deliveries", lambda: delivered(bed, start, len(subjects)), timeout=60)
    log = mail_log(bed, start)
    assert "status=deferred" not in log, [line for line in log.splitlines() if "status=deferred" in line]
    for subject in subjects[:: max(1, len(subjects) // 5)]:
        mc.imap_find(server, *thomas, subject)


def test_the_socket_comes_up_with_sockets_target_as_at_boot_and_starts_the_relay(host, server, anna):
    """Enabled, the socket belongs to sockets.target, which a boot starts before
    postfix; the relay starts with the first delivery and finds the socket."""
    bed = host.bed
    bed.systemctl("stop", "postmaster-lmtp.service", "postmaster-lmtp.socket")
    assert not bed.is_active("postmaster-lmtp.socket")
    bed.systemctl("start", "sockets.target")
    assert bed.is_active("postmaster-lmtp.socket")
    assert not bed.is_active("postmaster-lmtp.service")
    start = since(bed)
    subject = mc.unique_subject("after sockets.target")
    assert mc.send_inbound(server, OUTSIDE, ["anna@example.net"], subject) == {}
    mc.imap_find(server, *anna, subject)
    assert bed.is_active("postmaster-lmtp.service")
    assert "relaying LMTP from" in relay_log(bed, start), relay_log(bed, start)


def test_the_relay_units_verify_clean_and_are_hardened(host):
    bed = host.bed
    units = [f"/usr/local/lib/systemd/system/postmaster-lmtp.{kind}" for kind in ("socket", "service")]
    res = bed.run(["systemd-analyze", "verify", *units])
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res
    out = bed.run(["systemd-analyze", "security", "--no-pager", "postmaster-lmtp.service"], check=True).stdout
    m = re.search(r"Overall exposure level for postmaster-lmtp\.service: ([\d.]+)", out)
    assert m, out
    print(m.group(0))  # the figure, for `pytest -rP`
    # 0.2 when written (systemd 257). What systemd 252's --offline check still lists:
    # AF_UNIX itself, the host's root directory, RemoveIPC= (not set: it would remove
    # user postfix's IPC objects, postfix's own) and the clock's device (read-only).
    assert float(m.group(1)) <= 0.3, out


def test_a_rcpt_whose_user_lookup_was_cut_is_sent_again_instead_of_deferred(host, server, thomas):
    """What a dovecot reload does to an lmtp user lookup, made to happen on purpose:
    dovecot's auth process is frozen while a delivery's RCPT waits for its lookup,
    then killed. lmtp answers that RCPT 451 4.3.0 (its lookup "Disconnected
    unexpectedly"), which postfix deferred to its next queue run; the relay sends
    the RCPT again, dovecot's master starts a new auth process for the new lookup,
    and the mail is delivered at once."""
    bed = host.bed
    start = since(bed)
    # A delivery first, so that the lmtp process the next one reaches holds a
    # connection to auth that the kill cuts (one still waiting in the socket's
    # backlog would be taken by the next auth process, as at a reload).
    assert mc.send_inbound(server, OUTSIDE, ["thomas@example.org"], mc.unique_subject("before the cut")) == {}
    mc.wait_for("postfix's log of the first delivery", lambda: delivered(bed, start, 1))
    procs = bed.run(["ps", "-eo", "pid=,args="], check=True).stdout.splitlines()
    auth = [line.split()[0] for line in procs if line.split(None, 1)[1:] == ["dovecot/auth"]]
    assert len(auth) == 1, procs
    bed.run(["kill", "-STOP", auth[0]], check=True)
    try:
        subject = mc.unique_subject("user lookup cut")
        # Port 25 needs nothing of dovecot's auth to accept it (no AUTH).
        assert mc.send_inbound(server, OUTSIDE, ["thomas@example.org"], subject) == {}
        # postfix hands it on at once; lmtp's lookup then waits for the frozen auth.
        time.sleep(2)
    finally:
        bed.run(["kill", "-KILL", auth[0]], check=True)
    mc.imap_find(server, *thomas, subject)
    sent = mc.wait_for("postfix's log of the deliveries", lambda: delivered(bed, start, 2))
    assert all("[private/postmaster-lmtp]" in line for line in sent), sent
    log = mail_log(bed, start)
    # dovecot's lines for the cut lookup and postfix's for the delivery, for `pytest -rP`.
    print("\n".join(line for line in log.splitlines() if "thomas@example.org" in line))
    assert "Disconnected unexpectedly" in log, "the lookup was not cut: the test did not test"
    assert "status=deferred" not in log, [line for line in log.splitlines() if "status=deferred" in line]
    relayed = relay_log(bed, start)
    print(relayed)
    assert RCPT_RESENT in relayed and RCPT_SAVED in relayed, relayed
    assert UNFOLLOWED not in relayed, relayed
