"""The TLS front (`postmaster tls-front`, postmaster-tls.socket/.service): TLS for
IMAP, POP3 and ManageSieve in front of dovecot, so that a new certificate is a
reload of the front and never of dovecot.

Why: every dovecot reload replaced dovecot's auth process, and a login in flight
failed with it ("Auth server restarted (pid A -> B), aborting auth"); dovecot reads
certificates only when it reads its configuration, so each renewal needed one. Now
the daemon reloads the front (it reads the pair again and serves it from the next
handshake), dovecot listens on loopback only (PROXY v2 header: the client's address,
and that it spoke TLS) and is not reloaded at all.

Checked from outside with real clients against real dovecot: logins on every port
through the front while certificates are renewed (none fails, dovecot neither
reloaded nor restarted); what the front says before STARTTLS (no login, the
capabilities that lead to STARTTLS, nothing injected before TLS carried into it);
dovecot seeing the client's own address."""

from __future__ import annotations

import hashlib
import imaplib
import poplib
import socket
import threading
import time

import mailclient as mc
import mailhost
import pytest

FRONT_PORTS = (993, 995, 143, 110)


def _login_once(server, port: int, user: str, password: str) -> None:
    ctx = mc.tls_context(server)
    if port == 993:
        m = imaplib.IMAP4_SSL(server.address, 993, ssl_context=ctx, timeout=server.timeout)
    elif port == 143:
        m = imaplib.IMAP4(server.address, 143, timeout=server.timeout)
        m.starttls(ssl_context=ctx)
    elif port == 995:
        p = poplib.POP3_SSL(server.address, 995, context=ctx, timeout=server.timeout)
    else:
        p = poplib.POP3(server.address, 110, timeout=server.timeout)
        p.stls(context=ctx)
    if port in (993, 143):
        m.login(user, password)
        m.select("INBOX")
        m.logout()
    else:
        p.user(user)
        p.pass_(password)
        p.stat()
        p.quit()


def test_renewals_reload_the_front_not_dovecot_and_no_login_fails(host, server, anna):
    b = host.bed
    dovecot = b.main_pid("dovecot.service")
    front = b.main_pid("postmaster-tls.service")
    assert front, "the TLS front does not run"
    since = b.run(["date", "+%Y-%m-%d %H:%M:%S"], check=True).stdout.strip()
    stop = threading.Event()
    done: dict[int, int] = {p: 0 for p in FRONT_PORTS}
    failed: list[str] = []

    def logins(port: int) -> None:
        while not stop.is_set():
            try:
                _login_once(server, port, *anna)
                done[port] += 1
            except Exception as e:  # every failure is a finding
                failed.append(f"port {port}: {e!r}")
                time.sleep(0.2)

    threads = [threading.Thread(target=logins, args=(p,)) for p in FRONT_PORTS]
    for t in threads:
        t.start()
    fingerprints = []
    try:
        for i in range(3):
            chain, key, fingerprint = mailhost.new_pair(host, "front", f"front-{i}")
            mailhost.install_pair(host, chain, key)
            fingerprints.append(fingerprint)
            mc.wait_for(f"renewal {i} served on {FRONT_PORTS}",
                        lambda: all(mc.served_fingerprint(server, p) == fingerprint for p in FRONT_PORTS),
                        timeout=30)
            time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not failed, failed[:10]
    assert all(n >= 3 for n in done.values()), done
    # dovecot neither restarted nor reloaded; the front reloaded, not restarted.
    assert b.main_pid("dovecot.service") == dovecot, "dovecot was restarted"
    journal = b.run(["journalctl", "--no-pager", "-q", "--since", since, "-u", "dovecot.service"]).stdout
    assert "SIGHUP received" not in journal and "Reloading" not in journal, journal[-2000:]
    assert b.main_pid("postmaster-tls.service") == front, "the front was restarted"
    served = b.run(["journalctl", "--no-pager", "-q", "--since", since, "-u", "postmaster-tls.service"]).stdout
    assert sum("serving the certificate" in line for line in served.splitlines()) >= 3, served[-2000:]
    # ManageSieve (4190) serves the new certificate too, after STARTTLS.
    assert _sieve_fingerprint(server) == fingerprints[-1]


def _sieve_fingerprint(server) -> str:
    with socket.create_connection((server.address, 4190), timeout=server.timeout) as raw:
        f = raw.makefile("rb")
        _read_until_ok(f)
        raw.sendall(b"STARTTLS\r\n")
        assert f.readline().startswith(b"OK"), "STARTTLS refused on 4190"
        with mc.tls_context(server).wrap_socket(raw, server_hostname=server.name) as tls:
            # RFC 5804 2.2: the capabilities again, now with SASL mechanisms.
            caps = _read_until_ok(tls.makefile("rb"))
            assert b'"SASL" "PLAIN LOGIN"' in caps and b"STARTTLS" not in caps, caps
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def _read_until_ok(f) -> bytes:
    lines = b""
    while True:
        line = f.readline()
        assert line, f"closed; so far: {lines!r}"
        lines += line
        if line.startswith((b"OK", b"NO", b"BYE")):
            return lines


def _plain(server, port: int):
    s = socket.create_connection((server.address, port), timeout=server.timeout)
    return s, s.makefile("rb")


def _greeted_plain(server, port: int):
    """A plaintext connection past its greeting (ManageSieve's is a capability list)."""
    s, f = _plain(server, port)
    if port == 4190:
        _read_until_ok(f)
    else:
        f.readline()
    return s, f


def test_before_starttls_only_the_way_to_tls(server, anna):
    # IMAP: the greeting offers STARTTLS and says logins are disabled; a LOGIN is
    # refused as dovecot refuses it; nothing else is served.
    s, f = _plain(server, 143)
    with s:
        greeting = f.readline()
        assert b"STARTTLS" in greeting and b"LOGINDISABLED" in greeting, greeting
        s.sendall(f"a1 LOGIN {anna[0]} {anna[1]}\r\n".encode())
        assert f.readline().startswith(b"a1 NO [PRIVACYREQUIRED]")
        s.sendall(b"a2 SELECT INBOX\r\n")
        assert f.readline().startswith(b"a2 BAD")
        s.sendall(b"a3 LOGOUT\r\n")
        assert f.readline().startswith(b"* BYE")
    # POP3: STLS offered, USER refused.
    s, f = _plain(server, 110)
    with s:
        assert f.readline().startswith(b"+OK")
        s.sendall(b"CAPA\r\n")
        caps = []
        while (line := f.readline()) != b".\r\n":
            caps.append(line.strip())
        assert b"STLS" in caps and b"USER" not in caps, caps
        s.sendall(f"USER {anna[0]}\r\n".encode())
        assert f.readline().startswith(b"-ERR [AUTH]")
    # ManageSieve: STARTTLS, no SASL mechanism before TLS; AUTHENTICATE refused.
    s, f = _plain(server, 4190)
    with s:
        caps = _read_until_ok(f)
        assert b'"STARTTLS"' in caps and b'"SASL" ""' in caps, caps
        s.sendall(b'AUTHENTICATE "PLAIN" "AGFubmEAeA=="\r\n')
        assert f.readline().startswith(b"NO")


@pytest.mark.parametrize("port,starttls", [(143, b"a STARTTLS\r\na CAPABILITY\r\n"), (110, b"STLS\r\nCAPA\r\n"),
                                           (4190, b"STARTTLS\r\nCAPABILITY\r\n")])
def test_nothing_sent_before_tls_is_carried_into_it(server, port, starttls):
    """A command after STARTTLS in the same packet would run inside the TLS session
    as if the client had sent it there (CVE-2011-0411's kind): the front closes
    instead of starting TLS."""
    s, f = _greeted_plain(server, port)
    with s:
        s.sendall(starttls)
        assert f.readline() == b"", "the front answered a STARTTLS with plaintext after it"
    # The same STARTTLS alone is answered: it was the injected line that closed.
    s, f = _greeted_plain(server, port)
    with s:
        s.sendall(starttls.split(b"\n")[0] + b"\n")
        assert f.readline().split(b" ")[0 if port != 143 else 1] in (b"OK", b"+OK"), "STARTTLS refused"


def test_one_address_cannot_hold_every_slot_before_tls(server):
    """At most 20 connections from one address may wait before TLS; the next is
    closed at once, and a TLS session from the same address still works once they
    are gone (the count goes down as connections end)."""
    held = []
    try:
        for _ in range(20):
            s, f = _plain(server, 143)
            assert f.readline().startswith(b"* OK"), "no greeting"
            held.append(s)
        s, f = _plain(server, 143)
        with s:
            assert f.readline() == b"", "a 21st connection before TLS was served"
    finally:
        for s in held:
            s.close()
    mc.wait_for("a connection served again", lambda: _greeted(server), timeout=10)


def _greeted(server) -> bool:
    s, f = _plain(server, 143)
    with s:
        return f.readline().startswith(b"* OK")


def test_dovecot_sees_the_clients_own_address(host, server, thomas):
    """Each connection reaches dovecot with the client's address (its log, and the
    login policy that blocks guessers by address: test_logins.py)."""
    b = host.bed
    since = b.run(["date", "+%Y-%m-%d %H:%M:%S"], check=True).stdout.strip()
    # The address the bed sees this machine as: the other end of a connection to it.
    with socket.create_connection((server.address, 993), timeout=server.timeout) as s:
        own = s.getsockname()[0]
    for port in FRONT_PORTS:
        _login_once(server, port, *thomas)

    def logins():
        lines = b.run(["journalctl", "--no-pager", "-q", "--since", since, "-u", "dovecot.service"]).stdout
        # "Logged in:" (dovecot 2.4; 2.3 said "Login:").
        found = [line for line in lines.splitlines() if "Logged in: user=<thomas>" in line]
        return found if len(found) >= 4 else None

    try:
        found = mc.wait_for("dovecot's login lines", logins, timeout=20)
    except AssertionError:
        print(b.run(["journalctl", "--no-pager", "-q", "--since", since]).stdout[-6000:])
        raise
    assert all(f"rip={own}," in line for line in found), found
    # TLS is the front's, and dovecot knows the client spoke it.
    assert all("TLS" in line for line in found), found
    # Nothing but the front reaches dovecot's listeners from outside.
    for port in (10143, 10110, 14190):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((server.address, port), timeout=5).close()
