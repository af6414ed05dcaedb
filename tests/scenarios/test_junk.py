"""Junk that learns, filters and vacation (issue #13, second part).

- Probable spam (a score between add_header_score and reject_score) is filed into the
  recipient's Junk by dovecot's Sieve, before the user's own script, not into INBOX.
- Moving a message into Junk over IMAP teaches rspamd's Bayes filter "spam", moving
  it out "ham" (IMAPSieve piping it to rspamd's controller); the learn counters of
  `rspamc stat` show it. Bayes lives in valkey.
- Users manage their filters over ManageSieve (4190, STARTTLS before AUTHENTICATE): a
  vacation reply answers an outside sender once, DKIM-signed by the host.
- valkey stopped: mail still flows, nothing is lost, `postmaster status` says what is
  missing.

The bed's rspamd scores a Subject with BED-PROBABLE-SPAM at 10 (tests/lib/bed-setup.sh):
real scoring rules cannot be made to land between the two thresholds reliably.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
import socket
import time
import uuid

import mailclient as mc
import mailhost

SOMEONE = "someone@example.com"
CONTROLLER = "/run/rspamd-learn/controller.sock"


def rspamd_log(host, lines: int = 60) -> str:
    return host.bed.run(["tail", "-n", str(lines), "/var/log/rspamd/rspamd.log"]).stdout


def learned(host) -> dict[str, int]:
    """How many messages rspamd's Bayes has learned, by statfile (BAYES_SPAM,
    BAYES_HAM), from `rspamc stat` on the controller socket as root."""
    out = host.bed.run(["rspamc", "--connect", CONTROLLER, "stat"], check=True).stdout
    counts = {m[1]: int(m[2]) for m in re.finditer(r"Statfile: (\w+) .*?learned: (-?\d+)", out)}
    assert {"BAYES_SPAM", "BAYES_HAM"} <= counts.keys(), out
    return counts


def wordy_body(what: str) -> str:
    """A body with enough distinct words for Bayes to learn from (rspamd skips
    messages with fewer than 11 tokens), unique to this message."""
    tag = uuid.uuid4().hex
    words = " ".join(f"{what}{i}{tag[i % 32]}" for i in range(40))
    return f"Hello from outside about {what}.\n{words}\nKind regards, someone at example.com\n"


def send_clean(world, subject: str, body: str) -> None:
    msg = mc.make_message(SOMEONE, ["thomas@example.org"], subject, body)
    assert world.send(SOMEONE, "thomas@example.org", msg) == {"refused": {}}


def move(server, user: tuple[str, str], subject: str, source: str, target: str) -> None:
    """Moves the message with `subject` from mailbox `source` to `target` (IMAP MOVE,
    RFC 6851: what a mail client's "Junk"/"Not junk" buttons send)."""
    m = mc.imap_login(server, *user)
    try:
        typ, _ = m.select(source)
        assert typ == "OK", source
        typ, data = m.uid("SEARCH", "HEADER", "Subject", f'"{subject}"')
        uids = data[0].split()
        assert len(uids) == 1, (source, subject, data)
        typ, data = m.uid("MOVE", uids[0].decode(), target)
        assert typ == "OK", (typ, data)
    finally:
        m.logout()


def wait_learned(host, expected: dict[str, int], timeout: float = 20.0) -> dict[str, int]:
    last: dict[str, int] = {}

    def probe():
        nonlocal last
        last = learned(host)
        return all(last[k] == v for k, v in expected.items())
    try:
        mc.wait_for(f"Bayes counters {expected}", probe, timeout=timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen {last}\n{rspamd_log(host)}\n"
                             + host.bed.journal("dovecot.service", lines=30)) from None
    return last


# ---- 2b: probable spam lands in Junk ---------------------------------------------------

def test_probable_spam_is_filed_into_junk_not_inbox(host, world, server, thomas):
    subject = mc.unique_subject("BED-PROBABLE-SPAM offer")
    msg = mc.make_message(SOMEONE, ["thomas@example.org"], subject, "A probable spam.\n")
    assert world.send(SOMEONE, "thomas@example.org", msg) == {"refused": {}}
    got = mc.imap_find(server, *thomas, subject, mailbox="Junk")
    assert got["X-Spam"] == "Yes", got
    assert mc.imap_absent(server, *thomas, subject), "also in INBOX"
    # rspamd scored it between the thresholds (6 and 15), so it was marked, not refused.
    mid = msg["Message-ID"].strip("<>")
    lines = [l for l in host.bed.run(["grep", "-F", mid, "/var/log/rspamd/rspamd.log"]).stdout.splitlines()
             if "(add header)" in l]
    assert lines, rspamd_log(host)
    score = float(re.search(r"\(add header\): \[(-?[\d.]+)/", lines[-1])[1])
    assert 6 <= score < 15, lines[-1]
    assert "BED_PROBABLE_SPAM" in lines[-1], lines[-1]


def test_clean_mail_stays_in_inbox(host, world, server, thomas):
    # The control for the test above: the same way in, no marker, no Junk.
    subject = mc.unique_subject("an ordinary offer")
    send_clean(world, subject, "An ordinary message.\n")
    got = mc.imap_find(server, *thomas, subject)
    assert got["X-Spam"] is None, got
    m = mc.imap_login(server, *thomas)
    try:
        m.select("Junk", readonly=True)
        typ, data = m.search(None, "HEADER", "Subject", f'"{subject}"')
        assert not data[0].split(), "in Junk too"
    finally:
        m.logout()


def test_junk_exists_for_every_user_with_its_special_use(server, thomas, anna):
    for user in (thomas, anna):
        m = mc.imap_login(server, *user)
        try:
            typ, data = m.list('""', "Junk")
            assert typ == "OK" and data and data[0] is not None, data
            assert b"\\Junk" in data[0], data
            typ, data = m.lsub('""', "Junk")
            assert data and data[0] is not None, f"Junk not subscribed for {user[0]}: {data}"
        finally:
            m.logout()


# ---- 5: moving into and out of Junk teaches rspamd ---------------------------------------

def test_moving_into_and_out_of_junk_teaches_rspamd(host, world, server, thomas):
    before = learned(host)
    subject = mc.unique_subject("learn me")
    send_clean(world, subject, wordy_body("learnme"))
    mc.imap_find(server, *thomas, subject)

    move(server, thomas, subject, "INBOX", "Junk")
    after_spam = wait_learned(host, {"BAYES_SPAM": before["BAYES_SPAM"] + 1})
    assert after_spam["BAYES_HAM"] == before["BAYES_HAM"], after_spam

    # "Not junk": learned as ham instead (rspamd takes back the spam verdict).
    move(server, thomas, subject, "Junk", "INBOX")
    after_ham = wait_learned(host, {"BAYES_HAM": before["BAYES_HAM"] + 1})
    assert after_ham["BAYES_SPAM"] == before["BAYES_SPAM"], after_ham


def test_moves_that_are_no_verdict_teach_nothing(host, world, server, thomas):
    subject = mc.unique_subject("just tidying")
    send_clean(world, subject, wordy_body("tidying"))
    mc.imap_find(server, *thomas, subject)
    before = learned(host)
    move(server, thomas, subject, "INBOX", "Trash")
    move(server, thomas, subject, "Trash", "INBOX")
    # Into Junk, then deleted from there: spam once, never ham.
    move(server, thomas, subject, "INBOX", "Junk")
    wait_learned(host, {"BAYES_SPAM": before["BAYES_SPAM"] + 1})
    move(server, thomas, subject, "Junk", "Trash")
    time.sleep(3)
    assert learned(host) == {**before, "BAYES_SPAM": before["BAYES_SPAM"] + 1}


def test_no_local_user_but_the_mail_user_reaches_the_controller(host):
    # The controller is only on its socket (no TCP 11334), in a directory for rspamd
    # and the mail user's group: learning is not open to every local user.
    probe = ("import socket,sys; s=socket.socket(socket.AF_UNIX); "
             f"s.connect({CONTROLLER!r}); print('connected')")
    as_vmail = host.bed.run(["setpriv", "--reuid=vmail", "--regid=vmail", "--init-groups",
                             "python3", "-c", probe])
    assert as_vmail.returncode == 0 and "connected" in as_vmail.stdout, as_vmail.stderr
    as_nobody = host.bed.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                              "python3", "-c", probe])
    assert as_nobody.returncode != 0 and "Permission denied" in as_nobody.stderr, as_nobody
    tcp = host.bed.run(["python3", "-c",
                        "import socket; socket.create_connection(('127.0.0.1', 11334), timeout=3)"])
    assert tcp.returncode != 0 and "Connection refused" in tcp.stderr, tcp


# ---- 6: ManageSieve and a vacation reply -------------------------------------------------

class ManageSieve:
    """A ManageSieve client (RFC 5804), just what the tests need."""

    def __init__(self, server: mc.Server):
        self.server = server
        self.sock = socket.create_connection((server.address, 4190), timeout=server.timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.response()

    def response(self) -> tuple[str, list[str]]:
        """Lines up to the one starting with OK, NO or BYE: (that line, the others)."""
        lines = []
        while True:
            raw = self.file.readline()
            if not raw:
                raise ConnectionError(f"closed after {lines}")
            line = raw.decode().rstrip("\r\n")
            if line.split(" ", 1)[0] in ("OK", "NO", "BYE"):
                return line, lines
            lines.append(line)

    def command(self, line: str) -> tuple[str, list[str]]:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.response()

    def starttls(self) -> tuple[str, list[str]]:
        status, _ = self.command("STARTTLS")
        assert status.startswith("OK"), status
        ctx = mc.tls_context(self.server)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=self.server.name)
        self.file = self.sock.makefile("rb")
        return self.response()  # the capabilities again, now over TLS

    def authenticate(self, user: str, password: str) -> str:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.command(f'AUTHENTICATE "PLAIN" "{token}"')[0]

    def putscript(self, name: str, script: str) -> str:
        data = script.encode()
        return self.command(f'PUTSCRIPT "{name}" {{{len(data)}+}}\r\n{script}')[0]

    def close(self) -> None:
        try:
            self.command("LOGOUT")
        finally:
            self.sock.close()


def set_active(server, user: tuple[str, str], name: str, script: str | None = None) -> None:
    """Over ManageSieve as `user`: uploads `script` as `name` (if given) and makes
    `name` the active script; "" deactivates whatever is active."""
    s = ManageSieve(server)
    try:
        s.starttls()
        assert s.authenticate(*user).startswith("OK")
        if script is not None:
            assert s.putscript(name, script).startswith("OK")
        assert s.command(f'SETACTIVE "{name}"')[0].startswith("OK")
    finally:
        s.close()


def test_managesieve_refuses_a_password_before_starttls(server, thomas):
    s = ManageSieve(server)
    try:
        assert s.greeting[0].startswith("OK"), s.greeting
        assert '"STARTTLS"' in s.greeting[1], s.greeting
        # No mechanism is offered before TLS, and a client that tries anyway is refused.
        assert '"SASL" ""' in s.greeting[1], s.greeting
        status = s.authenticate(*thomas)
        assert status.startswith("NO (ENCRYPT-NEEDED)"), status
    finally:
        s.close()
    # The same login works once the connection is encrypted. (A new connection: on
    # the refused one, dovecot 2.4.1 answers a later AUTHENTICATE with "Invalid
    # base64 data in initial response" even after STARTTLS.)
    s = ManageSieve(server)
    try:
        capabilities = s.starttls()
        assert '"SASL" "PLAIN LOGIN"' in capabilities[1], capabilities
        assert s.authenticate(*thomas).startswith("OK")
    finally:
        s.close()


def vacation_replies(world, subject: str) -> list[bytes]:
    return [raw for raw in world.messages()
            if f"Subject: {subject}".encode() in raw.split(b"\n\n", 1)[0].replace(b"\r", b"")]


def test_vacation_set_over_managesieve_answers_once_signed(host, world, server, thomas, dns_published):
    away = f"Away {uuid.uuid4().hex[:8]}"
    s = ManageSieve(server)
    try:
        capabilities = s.starttls()
        assert any(l.startswith('"SIEVE"') and "vacation" in l for l in capabilities[1]), capabilities
    finally:
        s.close()
    set_active(server, thomas, "vacation",
               'require ["vacation"];\r\n'
               f'vacation :days 1 :subject "{away}" "I am away this week; back on Monday.";\r\n')
    try:
        first = mc.unique_subject("are you there")
        send_clean(world, first, "Hello thomas.\n")
        mc.imap_find(server, *thomas, first)
        reply = world.wait_message(lambda m: m["Subject"] == away)
        verdict = world.verify(reply)
        assert verdict["dkim"] == "pass", verdict
        assert [x["d"] for x in verdict["dkim_signatures"] if x["result"] == "pass"] == ["example.org"], verdict
        assert verdict["from_domain"] == "example.org" and verdict["dmarc_aligned"], verdict

        # The same sender again within the period: delivered, not answered again.
        second = mc.unique_subject("still there?")
        send_clean(world, second, "Hello again.\n")
        mc.imap_find(server, *thomas, second)
        time.sleep(5)  # the first reply took well under a second to arrive
        assert len(vacation_replies(world, away)) == 1, [r[:300] for r in vacation_replies(world, away)]
    finally:
        set_active(server, thomas, "")


def test_spam_is_not_answered_by_a_vacation(host, world, server, anna):
    # Junk filing ends the Sieve sequence: the user's vacation never sees spam, so
    # no reply goes to a (likely forged) sender.
    away = f"Anna away {uuid.uuid4().hex[:8]}"
    set_active(server, anna, "away", f'require ["vacation"];\r\nvacation :days 1 :subject "{away}" "Away.";\r\n')
    try:
        spam = mc.unique_subject("BED-PROBABLE-SPAM for anna")
        msg = mc.make_message(SOMEONE, ["anna@example.org"], spam, "A probable spam.\n")
        assert world.send(SOMEONE, "anna@example.org", msg) == {"refused": {}}
        mc.imap_find(server, *anna, spam, mailbox="Junk")
        # The control: ordinary mail from the same sender is answered, and the one
        # reply (a vacation answers a sender once) is to it, not to the spam.
        clean = mc.unique_subject("hello anna")
        msg = mc.make_message(SOMEONE, ["anna@example.org"], clean, "Hi.\n")
        assert world.send(SOMEONE, "anna@example.org", msg) == {"refused": {}}
        reply = world.wait_message(lambda m: m["Subject"] == away)
        parsed = email.message_from_bytes(reply, policy=email.policy.default)
        assert parsed["In-Reply-To"] == msg["Message-ID"], (parsed["In-Reply-To"], msg["Message-ID"], spam)
        time.sleep(2)
        assert len(vacation_replies(world, away)) == 1
    finally:
        set_active(server, anna, "")


# ---- 7: valkey stopped -------------------------------------------------------------------

def status_text(host) -> str:
    return host.bed.run(["postmaster", "status"]).stdout


def stop_for_status(host, unit: str) -> str:
    """Stops `unit` and returns `postmaster status` as it is then: DEGRADED."""
    host.bed.run(["systemctl", "stop", unit], check=True)
    status = status_text(host)
    assert "postmaster: DEGRADED" in status, status
    return status


def test_while_valkey_is_down_mail_flows_and_status_says_so(host, world, server, thomas):
    try:
        status = stop_for_status(host, "valkey-server")
        assert "unit:       valkey-server.service inactive" in status, status
        assert "not running: mail still flows and is checked, but rspamd's Bayes filter neither classifies nor learns" in status, status
        # Mail on 25 is accepted, checked and delivered; probable spam still goes to Junk.
        subject = mc.unique_subject("while valkey is down")
        send_clean(world, subject, wordy_body("valkeydown"))
        got = mc.imap_find(server, *thomas, subject)
        assert got.get_all("Authentication-Results"), got
        spam = mc.unique_subject("BED-PROBABLE-SPAM while valkey is down")
        msg = mc.make_message(SOMEONE, ["thomas@example.org"], spam, "A probable spam.\n")
        assert world.send(SOMEONE, "thomas@example.org", msg) == {"refused": {}}
        mc.imap_find(server, *thomas, spam, mailbox="Junk")
        # Learning fails, the move itself does not.
        move(server, thomas, subject, "INBOX", "Junk")
        mc.imap_find(server, *thomas, subject, mailbox="Junk")
        # Submission and signing are untouched.
        sent = mc.unique_subject("sent while valkey is down")
        mc.submit(server, 587, *thomas, "thomas@example.org", [SOMEONE], sent)
        assert world.verify(world.wait_message(lambda m: m["Subject"] == sent))["dkim"] == "pass"
    finally:
        host.bed.run(["systemctl", "start", "valkey-server"], check=True)
    mc.wait_for("valkey back in the status", lambda: "postmaster: healthy" in status_text(host), timeout=20)
    # Back: the Bayes counters answer again.
    learned(host)


def test_while_rspamd_is_down_status_says_what_happens_to_mail(host):
    try:
        status = stop_for_status(host, "rspamd")
        assert "not running: mail arriving on port 25 is deferred (4xx): sending servers keep it and retry, nothing is lost and nothing arrives unchecked" in status, status
        assert "not running: submitted mail is refused with a temporary error (451 4.7.1)" in status, status
    finally:
        host.bed.run(["systemctl", "start", "rspamd"], check=True)
        mailhost.wait_for_signer(host.bed)
