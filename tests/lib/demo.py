"""The README's first command: the seed's mail host in a throwaway container.

Boots it, sends a test mail through it the way a mail client would (submission on
587, read back over IMAPS), forwards its ports to 127.0.0.1, and waits for Ctrl-C.
`--once` stops after the test mail (the test command runs it that way).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scenarios"))

import mailhost  # noqa: E402
import mailclient as mc  # noqa: E402

FORWARDS = {2525: 25, 2587: 587, 2465: 465, 2143: 143, 2993: 993, 2110: 110, 2995: 995}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--once", action="store_true", help="stop after the test mail")
    args = ap.parse_args()

    keep = Path("/run/postmaster-demo")
    keep.mkdir(exist_ok=True)
    ca = keep / "ca.pem"
    net = "10.231.2"
    with tempfile.TemporaryDirectory(prefix="postmaster-demo-") as tmp:
        # The certificate comes from a local ACME CA (pebble) in the container,
        # obtained by postmaster over http-01, as it would from Let's Encrypt.
        host = mailhost.prepare_acme(Path(tmp) / "bed", f"{net}.2")
        bed = mailhost.boot(host, name="pmdemo", net=net)
        try:
            t0 = time.monotonic()
            mailhost.wait_for_acme_certificate(host)
            print(f"\npostmaster obtained its certificate from the local ACME CA in {time.monotonic() - t0:.2f} s.")
            ca.write_text(mailhost.pebble_root(host))
            server = mc.Server(address=bed.ip, ca_file=str(ca))
            subject = mc.unique_subject("Hello from postmaster's demo")
            user, password = "thomas", mailhost.PASSWORDS["thomas"]
            t0 = time.monotonic()
            mc.submit(server, 587, user, password, "thomas@example.org", ["anna@example.net"], subject,
                      "This went in on port 587 and came out over IMAPS.\n")
            got = mc.imap_find(server, "anna", mailhost.PASSWORDS["anna"], subject)
            took = time.monotonic() - t0
            print(f"\nThe mail host works: thomas@example.org -> anna@example.net, submitted on 587 and "
                  f"read over IMAPS in {took:.2f} s (Message-ID {got['Message-ID']}).")
            if args.once:
                return 0

            bed.forward(FORWARDS)
            print(f"""
It runs in a container at {bed.ip}, forwarded to this machine:
  SMTP 127.0.0.1:2525   submission (STARTTLS) 127.0.0.1:2587   submissions (TLS) 127.0.0.1:2465
  IMAP 127.0.0.1:2143 (STARTTLS)   IMAPS 127.0.0.1:2993   POP3 127.0.0.1:2110 (STARTTLS)   POP3S 127.0.0.1:2995
The certificate is for mail.example.org, from the container's ACME CA (pebble); its root: {ca}
Logins: thomas / {mailhost.PASSWORDS['thomas']}   anna / {mailhost.PASSWORDS['anna']}
Try:
  swaks --server 127.0.0.1:2587 --tls --auth-user thomas --auth-password {mailhost.PASSWORDS['thomas']} \\
        --from thomas@example.org --to anna@example.org
  openssl s_client -connect 127.0.0.1:2993 -servername mail.example.org -CAfile {ca}
  nsenter -t {bed.pid1} -a journalctl -f        (the container's journal)
Press Ctrl-C to stop it; the container and everything it made are removed.""")
            _wait()
            return 0
        finally:
            bed.stop()


def _wait() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping…")


if __name__ == "__main__":
    sys.exit(main())
