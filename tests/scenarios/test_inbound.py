"""Checks of mail arriving on port 25 (issue #13, first part): the rspamd that signs
outgoing mail also checks what other servers send, as postfix's milter on port 25.

mx.example.com (tests/lib/world.py) plays the other servers; each test that changes
example.com's zone puts it back (world.unpublish), so every test passes alone.
What is checked here, and decided by rspamd as `postmaster render` configures it:
- GTUBE (a "clear spam" pattern) is refused at SMTP time, with a 5xx;
- mail From a hosted domain that does not pass DMARC is refused, and such mail
  that this host signed and that comes back intact (a forward) is accepted;
- a sender domain's DMARC p=reject is honoured at SMTP time, p=quarantine marks
  (and so files into Junk);
- clean mail arrives with an Authentication-Results header;
- an ARC seal by the outside host shows as arc=pass there, a broken one as arc=reject
  (rspamd's word for RFC 8601's fail);
- while rspamd is stopped, mail on 25 is deferred (4xx), not lost.
"""

from __future__ import annotations

import email.policy
import time

import pytest

import mailclient as mc
import mailhost

SOMEONE = "someone@example.com"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def send(world, sender: str, rcpt: str, what: str, body: str = "Hello from outside.\n",
         envelope: str | None = None) -> tuple[str, dict]:
    subject = mc.unique_subject(what)
    msg = mc.make_message(sender, [rcpt], subject, body)
    return subject, world.send(envelope or sender, rcpt, msg)


def rspamd_log(host, lines: int = 40) -> str:
    """The end of rspamd's log in the mail host: why it decided what it did."""
    return host.bed.run(["tail", "-n", str(lines), "/var/log/rspamd/rspamd.log"]).stdout


def refused_permanently(host, result: dict) -> tuple[int, str]:
    assert "error" in result, f"accepted: {result}\n{rspamd_log(host)}"
    code, text = result["error"]
    assert 500 <= code < 600, f"{result}\n{rspamd_log(host)}"
    return code, text


@pytest.fixture
def example_com(world):
    """example.com's test records, put back to its base records afterwards."""
    def publish(records: str) -> None:
        world.publish("example.com", records)
        # rspamd keeps an SPF record for its TTL (1 s here, see bed-setup.sh), counted
        # in whole seconds of its event loop: wait until it has surely forgotten.
        time.sleep(2.5)
    yield publish
    world.unpublish("example.com")


def outside_key(world, example_com, selector: str, records: str = "") -> str:
    """A new RSA key inside mx.example.com (its path there), published as
    SELECTOR._domainkey.example.com beside SPF (`mx -all`) and `records`."""
    key = f"/run/inbound-{selector}.pem"
    world.bed.run(["openssl", "genrsa", "-out", key, "2048"], check=True)
    der = world.bed.run(f"openssl rsa -in {key} -pubout -outform DER 2>/dev/null | base64 -w0", check=True)
    record = f"v=DKIM1; k=rsa; p={der.stdout.strip()}"
    chunks = " ".join(f'"{record[i:i + 255]}"' for i in range(0, len(record), 255))
    example_com(f'@ TXT "v=spf1 mx -all"\n{records}\n{selector}._domainkey TXT ( {chunks} )')
    return key


def test_gtube_is_refused_at_smtp_time(host, world, server, thomas):
    subject, result = send(world, SOMEONE, "thomas@example.org", "gtube", f"Spam test.\n{GTUBE}\n")
    refused_permanently(host, result)
    assert mc.imap_absent(server, *thomas, subject)


@pytest.mark.parametrize("envelope", ["thomas@example.org", SOMEONE])
def test_unsigned_mail_from_a_hosted_domain_is_refused(host, world, thomas, dns_published, envelope):
    # example.org publishes `v=spf1 mx -all` and DMARC p=quarantine (postmaster dns):
    # the outside host is not its MX, and signs nothing. With the envelope sender at
    # example.com (no SPF record there) SPF does not even fail: DMARC still does.
    subject, result = send(world, "thomas@example.org", "anna@example.org", "forged thomas",
                           envelope=envelope)
    code, text = refused_permanently(host, result)
    assert code == 554 and "not sent by this host" in text, result


def test_dmarc_reject_of_the_sender_domain_is_honoured(host, world, example_com):
    example_com('@ TXT "v=spf1 -all"\n_dmarc TXT "v=DMARC1; p=reject"')
    subject, result = send(world, SOMEONE, "thomas@example.org", "dmarc reject")
    refused_permanently(host, result)


def test_clean_mail_arrives_with_authentication_results(host, world, server, thomas, example_com):
    example_com('@ TXT "v=spf1 mx -all"')
    subject, result = send(world, SOMEONE, "thomas@example.org", "clean inbound")
    assert result == {"refused": {}}, result
    got = mc.imap_find(server, *thomas, subject)
    results = " ".join(" ".join(got.get_all("Authentication-Results") or []).split())
    assert "spf=pass" in results and "smtp.mailfrom=someone@example.com" in results, \
        results + host.bed.run("grep -i spf /var/log/rspamd/rspamd.log | tail -n 12").stdout
    assert got["X-Spam"] is None, got["X-Spam"]



def test_mail_signed_by_the_outside_domain_passes_dkim_spf_and_dmarc(host, world, server, thomas, example_com):
    # mx.example.com signs with its own key (python3-dkim's dkimsign, not rspamd),
    # published in example.com's zone with SPF and a DMARC p=reject policy.
    outside = world.bed
    key = outside_key(world, example_com, "inbound", '_dmarc TXT "v=DMARC1; p=reject"')
    subject = mc.unique_subject("signed at example.com")
    msg = mc.make_message(SOMEONE, ["thomas@example.org"], subject, "Signed outside.\n")
    plain, signed = "/run/inbound-plain.eml", "/run/inbound-signed.eml"
    outside.path(plain).write_bytes(msg.as_bytes())
    try:
        outside.run(f"dkimsign inbound example.com {key} < {plain} > {signed}", check=True)
        raw = outside.path(signed).read_bytes()
        assert raw.startswith(b"DKIM-Signature:"), raw[:200]
        assert world.send(SOMEONE, "thomas@example.org", raw) == {"refused": {}}
    finally:
        for f in (plain, signed, key):
            outside.path(f).unlink(missing_ok=True)
    got = mc.imap_find(server, *thomas, subject)
    results = " ".join(" ".join(got.get_all("Authentication-Results") or []).split())
    for verdict in ("dkim=pass", "spf=pass", "dmarc=pass"):
        assert verdict in results, results
    assert "header.d=example.com" in results, results


# mx.example.com, as a forwarder or mailing list would, seals the message with ARC
# (python3-dkim's arc_sign: its own Authentication-Results, ARC-Message-Signature and
# ARC-Seal, key published in example.com's zone). rspamd's arc module (on by default)
# verifies the chain and says so in the Authentication-Results it adds: with the arc
# module off there is no arc= at all. "broken": the body changed after sealing, so the
# ARC-Message-Signature no longer matches.
ARC_SEAL = """\
import sys, dkim
plain, key, out = sys.argv[1:4]
msg = open(plain, "rb").read()
sealed = b"".join(dkim.arc_sign(msg, b"arc", b"example.com", open(key, "rb").read(), b"mx.example.com"))
assert sealed.startswith(b"ARC-Seal:"), sealed[:200]
open(out, "wb").write(sealed + msg)
"""


# rspamd 3.12 writes a failed chain as `arc=reject (…)` (its ARC_REJECT), not RFC 8601's
# `arc=fail`: the test pins what it writes.
@pytest.mark.parametrize("seal,verdict", [("intact", "arc=pass"), ("broken", "arc=reject")])
def test_arc_sealed_mail_shows_the_chains_verdict(host, world, server, thomas, example_com, seal, verdict):
    outside = world.bed
    key = outside_key(world, example_com, "arc")
    subject = mc.unique_subject(f"arc {seal}")
    msg = mc.make_message(SOMEONE, ["thomas@example.org"], subject, "Sealed outside.\n")
    # What mx.example.com concluded when the message reached it: the first ARC set
    # seals exactly this (its authserv-id is the sealer's).
    received = b"Authentication-Results: mx.example.com; spf=pass smtp.mailfrom=someone@example.com\r\n"
    plain, sealed = "/run/inbound-arc-plain.eml", "/run/inbound-arc-sealed.eml"
    outside.path(plain).write_bytes(received + msg.as_bytes(policy=email.policy.SMTP))
    try:
        outside.run(["python3", "-c", ARC_SEAL, plain, key, sealed], check=True)
        raw = outside.path(sealed).read_bytes()
    finally:
        for f in (plain, sealed, key):
            outside.path(f).unlink(missing_ok=True)
    assert b"ARC-Message-Signature:" in raw and b"ARC-Authentication-Results: i=1;" in raw, raw[:600]
    if seal == "broken":
        raw = raw.replace(b"Sealed outside.", b"Sealed outside, then changed.")
    assert world.send(SOMEONE, "thomas@example.org", raw) == {"refused": {}}
    got = mc.imap_find(server, *thomas, subject)
    ours = [" ".join(v.split()) for v in got.get_all("Authentication-Results") or []
            if not v.lstrip().startswith("mx.example.com")]
    assert len(ours) == 1, ours
    assert verdict in ours[0], f"{ours[0]}\n{rspamd_log(host)}"


def test_dmarc_quarantine_of_the_sender_domain_marks_the_message(host, world, server, thomas, example_com):
    example_com('@ TXT "v=spf1 -all"\n_dmarc TXT "v=DMARC1; p=quarantine"')
    subject, result = send(world, SOMEONE, "thomas@example.org", "dmarc quarantine")
    assert result == {"refused": {}}, f"{result}\n{rspamd_log(host)}"
    # Marked, and so filed into Junk (the Sieve script before the user's).
    got = mc.imap_find(server, *thomas, subject, mailbox="Junk")
    assert got["X-Spam"] == "Yes", f"{got}\n{rspamd_log(host)}"
    assert mc.imap_absent(server, *thomas, subject)
    results = " ".join(" ".join(got.get_all("Authentication-Results") or []).split())
    assert "dmarc=fail" in results and "spf=fail" in results, results


def test_while_rspamd_is_down_mail_on_25_is_deferred_not_lost(host, world, server, thomas):
    # The sending server gets a temporary error and keeps the message; once rspamd
    # is back, the same message is accepted and checked.
    host.bed.run(["systemctl", "stop", "rspamd"], check=True)
    try:
        subject = mc.unique_subject("while rspamd is down")
        msg = mc.make_message(SOMEONE, ["thomas@example.org"], subject, "Retry me.\n")
        result = world.send(SOMEONE, "thomas@example.org", msg)
        assert "error" in result, result
        # Refused at MAIL FROM (the error's code) or at every RCPT (theirs).
        codes = [c for c, _ in result["refused"].values()] if result.get("refused") else [result["error"][0]]
        assert codes and all(400 <= c < 500 for c in codes), result
    finally:
        host.bed.run(["systemctl", "start", "rspamd"], check=True)
        mailhost.wait_for_signer(host.bed)
    assert world.send(SOMEONE, "thomas@example.org", msg) == {"refused": {}}
    got = mc.imap_find(server, *thomas, subject)
    assert got.get_all("Authentication-Results"), got


def test_own_mail_coming_back_signed_is_accepted(host, world, server, thomas, anna, dns_published):
    # thomas writes to someone@example.com, who forwards it as it is to anna: From a
    # hosted domain, arriving on 25 from the outside host, but with this host's DKIM
    # signature intact, so DMARC passes and the forgery rule lets it through.
    subject = mc.unique_subject("signed here, forwarded back")
    mc.submit(server, 587, *thomas, "thomas@example.org", [SOMEONE], subject)
    raw = world.wait_message(lambda m: m["Subject"] == subject)
    assert world.send(SOMEONE, "anna@example.org", raw) == {"refused": {}}
    got = mc.imap_find(server, *anna, subject)
    results = " ".join(" ".join(got.get_all("Authentication-Results") or []).split())
    assert "dkim=pass header.d=example.org" in results and "dmarc=pass" in results, results
