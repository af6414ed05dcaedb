"""What a mail client does, with Python's own smtplib, imaplib, poplib and ssl.

Every check of the mail host from outside goes through here: the bed's pytest
scenarios and the NixOS VM tests (nix/tests) both use this file, so the two cannot
drift. Standard library only. Nothing here knows how the host was started.
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.utils
import email.policy
import hashlib
import imaplib
import poplib
import smtplib
import socket
import ssl
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Callable

CLIENT_HELO = "client.elsewhere.example"

TLS_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


@dataclass(frozen=True)
class Server:
    """Where the mail host is and how a client verifies it."""
    address: str        # IP or name to connect to
    ca_file: str        # the CA that signed the host's certificate
    name: str = "mail.example.org"  # the name the certificate must carry
    timeout: float = 20.0


class _NamedContext(ssl.SSLContext):
    """Verifies the certificate against `server_name` whatever address was dialled
    (the libraries pass the address they connected to as the name to check)."""

    server_name: str | None = None

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,
                    suppress_ragged_eofs=True, server_hostname=None, session=None):
        return super().wrap_socket(sock, server_side, do_handshake_on_connect,
                                   suppress_ragged_eofs, self.server_name or server_hostname, session)


def tls_context(server: Server, version: str | None = None) -> ssl.SSLContext:
    """A verifying client context; `version` pins one TLS version ("1.0" … "1.3")."""
    ctx = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.server_name = server.name
    ctx.load_verify_locations(server.ca_file)
    if version is not None:
        v = TLS_VERSIONS[version]
        if v < ssl.TLSVersion.TLSv1_2:
            # OpenSSL 3 refuses TLS < 1.2 at its default security level; the client
            # must be able to try, or a refusal would prove nothing.
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            # Deprecated on purpose: the tests prove the server refuses them.
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = v
            ctx.maximum_version = v
    return ctx


# ---- SMTP ---------------------------------------------------------------------------

def smtp(server: Server, port: int, tls: str, version: str | None = None) -> smtplib.SMTP:
    """A connected, EHLO'd SMTP session. tls: "none", "starttls" or "implicit"."""
    ctx = tls_context(server, version)
    if tls == "implicit":
        s = smtplib.SMTP_SSL(server.address, port, local_hostname=CLIENT_HELO,
                             timeout=server.timeout, context=ctx)
    else:
        s = smtplib.SMTP(server.address, port, local_hostname=CLIENT_HELO, timeout=server.timeout)
    s.ehlo()
    if tls == "starttls":
        s.starttls(context=ctx)
        s.ehlo()
    return s


def make_message(sender: str, to: list[str], subject: str, body: str) -> email.message.EmailMessage:
    m = email.message.EmailMessage()
    m["From"] = sender
    m["To"] = ", ".join(to)
    m["Subject"] = subject
    m["Message-ID"] = email.utils.make_msgid(domain="client.elsewhere.example")
    m.set_content(body)
    return m


def unique_subject(what: str) -> str:
    return f"{what} {uuid.uuid4().hex[:12]}"


def submit(server: Server, port: int, user: str, password: str, sender: str,
           to: list[str], subject: str, body: str = "Hello from the tests.\n") -> email.message.EmailMessage:
    """Sends a message as an authenticated user on 587 (STARTTLS) or 465 (TLS)."""
    msg = make_message(sender, to, subject, body)
    with smtp(server, port, "implicit" if port == 465 else "starttls") as s:
        s.login(user, password)
        s.send_message(msg, from_addr=sender, to_addrs=to)
    return msg


def send_inbound(server: Server, sender: str, to: list[str], subject: str,
                 body: str = "Hello from outside.\n") -> dict:
    """Delivers on port 25 as another mail server would (STARTTLS, no AUTH).
    Returns the refused recipients ({} when all were accepted)."""
    msg = make_message(sender, to, subject, body)
    with smtp(server, 25, "starttls") as s:
        return s.send_message(msg, from_addr=sender, to_addrs=to)


def rcpt_reply(server: Server, port: int, tls: str, sender: str, rcpt: str,
               login: tuple[str, str] | None = None) -> tuple[int, str]:
    """The server's reply to RCPT TO (after MAIL FROM), or to MAIL FROM if that fails."""
    with smtp(server, port, tls) as s:
        if login:
            s.login(*login)
        code, text = s.mail(sender)
        if code >= 400:
            return code, text.decode(errors="replace")
        code, text = s.rcpt(rcpt)
        s.rset()
        return code, text.decode(errors="replace")


# ---- IMAP and POP3 -------------------------------------------------------------------

def imap_login(server: Server, user: str, password: str) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL(server.address, 993, ssl_context=tls_context(server), timeout=server.timeout)
    m.login(user, password)
    return m


def wait_for(what: str, probe: Callable[[], object], timeout: float = 30.0, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def imap_find(server: Server, user: str, password: str, subject: str,
              timeout: float = 30.0, mailbox: str = "INBOX") -> email.message.EmailMessage:
    """Waits until a message with `subject` is in the user's mailbox; returns it."""
    m = imap_login(server, user, password)
    try:
        def probe():
            m.select(mailbox, readonly=True)
            typ, data = m.search(None, "HEADER", "Subject", f'"{subject}"')
            ids = data[0].split()
            if not ids:
                return None
            typ, parts = m.fetch(ids[-1], "(BODY.PEEK[])")
            return email.message_from_bytes(parts[0][1], policy=email.policy.default)
        return wait_for(f"{subject!r} in {user}'s {mailbox}", probe, timeout)
    finally:
        m.logout()


def imap_absent(server: Server, user: str, password: str, subject: str) -> bool:
    m = imap_login(server, user, password)
    try:
        m.select("INBOX", readonly=True)
        typ, data = m.search(None, "HEADER", "Subject", f'"{subject}"')
        return not data[0].split()
    finally:
        m.logout()


def pop3_find(server: Server, user: str, password: str, subject: str,
              timeout: float = 30.0) -> email.message.EmailMessage:
    """Waits until a message with `subject` can be retrieved over POP3S."""
    def probe():
        p = poplib.POP3_SSL(server.address, 995, context=tls_context(server), timeout=server.timeout)
        try:
            p.user(user)
            p.pass_(password)
            count, _ = p.stat()
            for i in range(count, 0, -1):
                _, lines, _ = p.retr(i)
                msg = email.message_from_bytes(b"\r\n".join(lines), policy=email.policy.default)
                if msg["Subject"] == subject:
                    return msg
            return None
        finally:
            p.quit()
    return wait_for(f"{subject!r} over POP3 for {user}", probe, timeout)


# ---- TLS ------------------------------------------------------------------------------

@contextlib.contextmanager
def tls_connection(server: Server, port: int, ctx: ssl.SSLContext):
    """A TLS socket on `port`, started the way that port's protocol starts TLS
    (implicitly, or after SMTP STARTTLS, IMAP STARTTLS or POP3 STLS). Closed without
    QUIT or LOGOUT: after a refused handshake there is no session to end."""
    if port in (465, 993, 995):
        with socket.create_connection((server.address, port), timeout=server.timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=server.name) as tls:
                yield tls
    elif port in (25, 587):
        s = smtp(server, port, "none")
        try:
            s.starttls(context=ctx)
            yield s.sock
        finally:
            s.close()
    elif port == 143:
        m = imaplib.IMAP4(server.address, 143, timeout=server.timeout)
        try:
            m.starttls(ssl_context=ctx)
            yield m.sock
        finally:
            m.sock.close()
    elif port == 110:
        p = poplib.POP3(server.address, 110, timeout=server.timeout)
        try:
            p.stls(context=ctx)
            yield p.sock
        finally:
            p.sock.close()
    else:
        raise ValueError(f"no TLS on port {port}")


def handshake(server: Server, port: int, version: str) -> str:
    """Completes a TLS handshake on `port` with exactly TLS `version`; returns the
    negotiated version. Raises on refusal."""
    with tls_connection(server, port, tls_context(server, version)) as tls:
        return tls.version()


def served_fingerprint(server: Server, port: int) -> str:
    """SHA-256 (hex) of the leaf certificate `port` serves now, verified as a
    client would verify it."""
    with tls_connection(server, port, tls_context(server)) as tls:
        return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def client_speaks(version: str, cert: str, key: str, ca_file: str) -> bool:
    """Control for the negative TLS checks: can this client complete a `version`
    handshake at all, against a local server that allows it?"""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    result = {}

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                result["server"] = tls.version()
        except (ssl.SSLError, OSError) as e:
            result["error"] = e
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        ctx = tls_context(Server("127.0.0.1", ca_file), version)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="mail.example.org") as tls:
                return tls.version() == {"1.0": "TLSv1", "1.1": "TLSv1.1", "1.2": "TLSv1.2", "1.3": "TLSv1.3"}[version]
    except (ssl.SSLError, OSError):
        return False
    finally:
        t.join(5)
        listener.close()
