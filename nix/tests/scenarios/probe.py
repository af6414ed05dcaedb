"""One check of the mail host at a time, for the NixOS VM test scripts.

    postmaster-probe login USER PASSWORD [--protocol imap|pop3|smtp]
    postmaster-probe submit USER PASSWORD --from ADDR --to ADDR [--read USER:PASSWORD ...]
    postmaster-probe inbound --to ADDR [--read USER:PASSWORD ...]
    postmaster-probe gtube --to ADDR
    postmaster-probe rcpt ADDR --expect CODE
    postmaster-probe served [--not FINGERPRINT]   (25, 465, 587, 143, 993, 110, 995, 4190)
    postmaster-probe move USER PASSWORD SUBJECT SOURCE TARGET

Everything goes through tests/scenarios/mailclient.py, like the bed's scenarios.
The server and the CA to trust come from POSTMASTER_TEST_SERVER and
POSTMASTER_TEST_CA (--server, --ca override them); --timeout bounds each
network operation (20 s). Exit 0 when the check holds;
otherwise a message on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import hashlib
import imaplib
import os
import poplib
import smtplib
import socket
import sys
from typing import BinaryIO

import mailclient as mc

OUTSIDE = "someone@elsewhere.example"
# The "clear spam" test pattern (GTUBE): rspamd's score for it is far above any
# reject threshold.
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def credentials(text: str) -> tuple[str, str]:
    user, _, password = text.partition(":")
    if not password:
        raise argparse.ArgumentTypeError(f"{text!r} is not USER:PASSWORD")
    return user, password


def peer_fingerprint(server: mc.Server, port: int) -> str:
    """SHA-256 (lowercase hex, as `postmaster status` shows it) of the leaf
    certificate served on `port`, verified against the CA, the way that port's
    protocol starts TLS."""
    ctx = mc.tls_context(server)
    if port in (465, 993, 995):
        with socket.create_connection((server.address, port), timeout=server.timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=server.name) as tls:
                der = tls.getpeercert(binary_form=True)
    elif port in (25, 587):
        with mc.smtp(server, port, "starttls") as s:
            der = s.sock.getpeercert(binary_form=True)
    elif port == 143:
        m = imaplib.IMAP4(server.address, 143, timeout=server.timeout)
        try:
            m.starttls(ssl_context=ctx)
            der = m.sock.getpeercert(binary_form=True)
        finally:
            m.logout()
    elif port == 110:
        p = poplib.POP3(server.address, 110, timeout=server.timeout)
        try:
            p.stls(context=ctx)
            der = p.sock.getpeercert(binary_form=True)
        finally:
            p.quit()
    elif port == 4190:
        # ManageSieve (RFC 5804): capabilities, then OK; STARTTLS, then OK.
        with socket.create_connection((server.address, port), timeout=server.timeout) as raw:
            reader = raw.makefile("rb")
            managesieve_ok(reader, "greeting")
            raw.sendall(b"STARTTLS\r\n")
            # Nothing more is sent in clear after this OK: the buffer holds no TLS.
            managesieve_ok(reader, "STARTTLS")
            with ctx.wrap_socket(raw, server_hostname=server.name) as tls:
                der = tls.getpeercert(binary_form=True)
    else:
        raise ValueError(f"no TLS on port {port}")
    return hashlib.sha256(der).hexdigest()


def managesieve_ok(reader: BinaryIO, what: str) -> None:
    """Reads ManageSieve response lines up to the one that ends the response;
    raises unless it is OK."""
    while True:
        line = reader.readline()
        if not line:
            raise ConnectionError(f"ManageSieve {what}: connection closed")
        if line.startswith((b"OK", b"NO", b"BYE")):
            if not line.startswith(b"OK"):
                raise ConnectionError(f"ManageSieve {what}: {line!r}")
            return


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="postmaster-probe")
    parser.add_argument("--server", default=os.environ.get("POSTMASTER_TEST_SERVER", "mail"))
    parser.add_argument("--ca", default=os.environ.get("POSTMASTER_TEST_CA"))
    # dovecot delays the logins of an address after its failures (up to 15 s).
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per network operation")
    sub = parser.add_subparsers(dest="check", required=True)

    p = sub.add_parser("login", help="a login: IMAPS (993), POP3S (995) or SMTP AUTH after STARTTLS (587)")
    p.add_argument("user")
    p.add_argument("password")
    p.add_argument("--protocol", choices=("imap", "pop3", "smtp"), default="imap")

    p = sub.add_parser("submit", help="submit on 587 and read it back over IMAPS")
    p.add_argument("user")
    p.add_argument("password")
    p.add_argument("--from", dest="sender", required=True)
    p.add_argument("--to", action="append", required=True)
    p.add_argument("--read", action="append", type=credentials, default=[])

    p = sub.add_parser("inbound", help="deliver on 25 as another server would, and read it back")
    p.add_argument("--to", action="append", required=True)
    p.add_argument("--read", action="append", type=credentials, default=[])

    p = sub.add_parser("gtube", help="deliver GTUBE on 25; prints the refusal's code, fails when accepted")
    p.add_argument("--to", action="append", required=True)

    p = sub.add_parser("rcpt", help="the reply to RCPT TO on port 25")
    p.add_argument("address")
    p.add_argument("--expect", type=int, required=True)

    p = sub.add_parser("served", help="the same certificate on every port; prints its fingerprint")
    p.add_argument("--not", dest="old", help="fail while this fingerprint is still served anywhere")

    p = sub.add_parser("move", help="move the message with SUBJECT between mailboxes over IMAPS (IMAP MOVE)")
    p.add_argument("user")
    p.add_argument("password")
    p.add_argument("subject")
    p.add_argument("source")
    p.add_argument("target")

    args = parser.parse_args(argv)
    if not args.ca:
        parser.error("no CA: set POSTMASTER_TEST_CA or pass --ca")
    server = mc.Server(address=args.server, ca_file=args.ca, timeout=args.timeout)

    if args.check == "login":
        # A refused login raises (smtplib's errors are OSErrors): exit 1.
        if args.protocol == "imap":
            mc.imap_login(server, args.user, args.password).logout()
        elif args.protocol == "pop3":
            pop = poplib.POP3_SSL(server.address, 995, context=mc.tls_context(server), timeout=server.timeout)
            pop.user(args.user)
            pop.pass_(args.password)
            pop.quit()
        else:
            with mc.smtp(server, 587, "starttls") as s:
                s.login(args.user, args.password)
        return 0

    if args.check == "submit":
        subject = mc.unique_subject(f"from {args.sender}")
        sent = mc.submit(server, 587, args.user, args.password, args.sender, args.to, subject)
        for user, password in args.read:
            got = mc.imap_find(server, user, password, subject)
            assert got["Message-ID"] == sent["Message-ID"], (user, got["Message-ID"])
        print(subject)
        return 0

    if args.check == "inbound":
        subject = mc.unique_subject("inbound")
        refused = mc.send_inbound(server, OUTSIDE, args.to, subject)
        if refused:
            print(f"refused: {refused}", file=sys.stderr)
            return 1
        for user, password in args.read:
            mc.imap_find(server, user, password, subject)
        print(subject)
        return 0

    if args.check == "gtube":
        subject = mc.unique_subject("gtube")
        try:
            refused = mc.send_inbound(server, OUTSIDE, args.to, subject, body=f"Spam test.\n{GTUBE}\n")
        except smtplib.SMTPResponseException as e:  # refused after DATA (the milter's verdict)
            print(e.smtp_code, e.smtp_error.decode(errors="replace"))
            return 0
        except smtplib.SMTPRecipientsRefused as e:
            codes = sorted({code for code, _ in e.recipients.values()})
            print(" ".join(map(str, codes)))
            return 0
        print(f"GTUBE accepted on 25 (refused recipients: {refused})", file=sys.stderr)
        return 1

    if args.check == "rcpt":
        code, text = mc.rcpt_reply(server, 25, "starttls", OUTSIDE, args.address)
        print(code, text)
        if code != args.expect:
            print(f"RCPT TO:<{args.address}> got {code}, expected {args.expect}: {text}", file=sys.stderr)
            return 1
        return 0

    if args.check == "served":
        seen = {port: peer_fingerprint(server, port) for port in (25, 465, 587, 143, 993, 110, 995, 4190)}
        for port, fingerprint in seen.items():
            print(f"port {port}: {fingerprint}", file=sys.stderr)
        if len(set(seen.values())) != 1:
            print("not the same certificate on every port", file=sys.stderr)
            return 1
        fingerprint = seen[25]
        if args.old is not None and fingerprint == args.old:
            print("still the old certificate", file=sys.stderr)
            return 1
        print(fingerprint)
        return 0

    if args.check == "move":
        # What a mail client's "Junk" and "Not junk" buttons send (RFC 6851).
        m = mc.imap_login(server, args.user, args.password)
        try:
            typ, _ = m.select(args.source)
            assert typ == "OK", f"cannot select {args.source}"
            typ, data = m.uid("SEARCH", "HEADER", "Subject", f'"{args.subject}"')
            uids = data[0].split()
            assert len(uids) == 1, f"{len(uids)} messages with that subject in {args.source}"
            typ, data = m.uid("MOVE", uids[0].decode(), args.target)
            assert typ == "OK", f"MOVE to {args.target}: {typ} {data}"
        finally:
            m.logout()
        return 0

    raise AssertionError(args.check)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (AssertionError, OSError, imaplib.IMAP4.error, poplib.error_proto) as e:
        print(f"postmaster-probe: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
