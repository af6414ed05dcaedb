"""The seed's mail host seen from outside, as mail clients and other servers see it.

Scenarios 1-7 of the test-bed issue; each test says which. The host: example.org
(catch-all to thomas) and example.net (no catch-all); mailboxes thomas and anna.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import ssl

import pytest

import mailclient as mc
import mailhost

OUTSIDE = "someone@elsewhere.example"


def normalized(body: str) -> str:
    """Mail travels with CRLF line ends, and stores may drop the final one."""
    return body.replace("\r\n", "\n").rstrip("\n")


# 1. Submission with AUTH on 587 and 465, read back over IMAPS and POP3S ------------------

@pytest.mark.parametrize("port", [587, 465])
def test_submission_delivers_to_imap_and_pop3(server, thomas, anna, port):
    subject = mc.unique_subject(f"submitted on {port}")
    body = f"Line one\nLine two with ümlaut\n-- \nthomas via {port}\n"
    sent = mc.submit(server, port, *thomas, "thomas@example.org", ["anna@example.org"], subject, body)

    got = mc.imap_find(server, *anna, subject)
    assert got["From"] == "thomas@example.org"
    assert got["To"] == "anna@example.org"
    assert got["Message-ID"] == sent["Message-ID"]
    assert normalized(got.get_content()) == normalized(body)
    assert "ESMTPSA id" in " ".join(got.get_all("Received")), "submitted mail is marked authenticated"

    popped = mc.pop3_find(server, *anna, subject)
    assert popped["Message-ID"] == sent["Message-ID"]
    assert normalized(popped.get_content()) == normalized(body)


# 2. Inbound on port 25 ---------------------------------------------------------------------

def test_inbound_to_a_mailbox(server, anna):
    subject = mc.unique_subject("inbound to anna")
    assert mc.send_inbound(server, OUTSIDE, ["anna@example.net"], subject) == {}
    assert mc.imap_find(server, *anna, subject)["To"] == "anna@example.net"


def test_inbound_to_an_alias_reaches_every_member(server, thomas, anna):
    subject = mc.unique_subject("inbound to sales")
    assert mc.send_inbound(server, OUTSIDE, ["sales@example.org"], subject) == {}
    mc.imap_find(server, *thomas, subject)
    mc.imap_find(server, *anna, subject)


def test_inbound_to_an_alias_in_every_domain(server, thomas):
    subject = mc.unique_subject("postmaster of example.net")
    assert mc.send_inbound(server, OUTSIDE, ["postmaster@example.net"], subject) == {}
    mc.imap_find(server, *thomas, subject)


def test_unknown_address_of_a_catch_all_domain_goes_to_the_catch_all(server, thomas):
    subject = mc.unique_subject("to nobody at example.org")
    assert mc.send_inbound(server, OUTSIDE, ["no-such-person@example.org"], subject) == {}
    assert mc.imap_find(server, *thomas, subject)["To"] == "no-such-person@example.org"


def test_unknown_address_without_catch_all_is_rejected_at_rcpt(server):
    code, text = mc.rcpt_reply(server, 25, "starttls", OUTSIDE, "no-such-person@example.net")
    assert code == 550, (code, text)
    assert "User unknown" in text, text


# 3. The catch-all never captures a real mailbox ---------------------------------------------

def test_catch_all_never_captures_a_mailbox(server, thomas, anna):
    subject = mc.unique_subject("for anna only")
    assert mc.send_inbound(server, OUTSIDE, ["anna@example.org"], subject) == {}
    mc.imap_find(server, *anna, subject)
    assert mc.imap_absent(server, *thomas, subject), "the catch-all mailbox got anna's mail"


# 4. No open relay -----------------------------------------------------------------------------

@pytest.mark.parametrize("port,tls", [(25, "starttls"), (25, "none"), (587, "starttls"), (465, "implicit")])
def test_no_relay_without_auth(server, port, tls):
    code, text = mc.rcpt_reply(server, port, tls, OUTSIDE, "victim@elsewhere.example")
    assert 500 <= code < 600, (code, text)


def test_no_relay_for_forged_local_sender_without_auth(server):
    code, text = mc.rcpt_reply(server, 25, "starttls", "thomas@example.org", "victim@elsewhere.example")
    assert code == 554 and "Relay access denied" in text, (code, text)


def test_authenticated_user_may_relay(server, thomas):
    code, text = mc.rcpt_reply(server, 587, "starttls", "thomas@example.org", "friend@elsewhere.example", login=thomas)
    assert code == 250, (code, text)


# 5. AUTH only over TLS, no plaintext logins, TLS 1.2+ only --------------------------------------

def test_auth_is_not_offered_before_tls(server):
    with mc.smtp(server, 587, "none") as s:
        assert not s.has_extn("auth"), "587 offers AUTH before STARTTLS"
        assert s.has_extn("starttls")
        code, text = s.mail("thomas@example.org")
        assert code == 530, "587 accepts mail before STARTTLS"
    with mc.smtp(server, 587, "starttls") as s:
        assert s.has_extn("auth"), "587 offers no AUTH after STARTTLS"
    with mc.smtp(server, 465, "implicit") as s:
        assert s.has_extn("auth")


def test_port_25_never_offers_auth(server):
    for tls in ("none", "starttls"):
        with mc.smtp(server, 25, tls) as s:
            assert not s.has_extn("auth"), f"port 25 offers AUTH ({tls})"


def test_plaintext_imap_login_is_refused(server, thomas):
    m = imaplib.IMAP4(server.address, 143, timeout=server.timeout)
    try:
        assert "LOGINDISABLED" in m.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            m.login(*thomas)
    finally:
        m.shutdown()


def test_plaintext_pop3_login_is_refused(server, thomas):
    p = poplib.POP3(server.address, 110, timeout=server.timeout)
    try:
        with pytest.raises(poplib.error_proto):
            p.user(thomas[0])
            p.pass_(thomas[1])
    finally:
        p.close()


def test_starttls_logins_work_on_143_and_110(server, thomas):
    m = imaplib.IMAP4(server.address, 143, timeout=server.timeout)
    m.starttls(ssl_context=mc.tls_context(server))
    m.login(*thomas)
    m.logout()
    p = poplib.POP3(server.address, 110, timeout=server.timeout)
    p.stls(context=mc.tls_context(server))
    p.user(thomas[0])
    p.pass_(thomas[1])
    p.quit()


TLS_PORTS = [25, 587, 465, 143, 993, 110, 995]


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_old_tls_is_refused_on_every_port(server, host, version):
    chain = str(host.dir / "tls" / "fullchain.pem")
    key = str(host.dir / "tls" / "privkey.pem")
    assert mc.client_speaks(version, chain, key, server.ca_file), \
        f"this client cannot speak TLS {version} at all; refusals would prove nothing"
    for port in TLS_PORTS:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            mc.handshake(server, port, version)
            pytest.fail(f"port {port} completed a TLS {version} handshake")


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_current_tls_works_on_every_port(server, version):
    for port in TLS_PORTS:
        negotiated = mc.handshake(server, port, version)
        assert negotiated == f"TLSv{version}", (port, negotiated)


# 6. No forging of other users' addresses -------------------------------------------------------

@pytest.mark.parametrize("port", [587, 465])
def test_cannot_send_as_another_user(server, thomas, port):
    tls = "implicit" if port == 465 else "starttls"
    for forged in ["anna@example.org", "info@example.net", "sales@example.org"]:
        code, text = mc.rcpt_reply(server, port, tls, forged, "friend@elsewhere.example", login=thomas)
        assert code == 553 and "not owned by user" in text, (forged, code, text)


@pytest.mark.parametrize("sender", ["thomas@example.org", "thomas@example.net", "postmaster@example.org", "abuse@example.net"])
def test_can_send_as_own_addresses_and_aliases(server, thomas, anna, sender):
    subject = mc.unique_subject(f"as {sender}")
    mc.submit(server, 587, *thomas, sender, ["anna@example.org"], subject)
    assert mc.imap_find(server, *anna, subject)["From"] == sender


def test_anna_can_send_as_her_sole_alias(server, anna, thomas):
    subject = mc.unique_subject("as info@example.net")
    mc.submit(server, 465, *anna, "info@example.net", ["thomas@example.org"], subject)
    mc.imap_find(server, *thomas, subject)


# 7. The seed's semantics ------------------------------------------------------------------------

def test_one_mailbox_for_both_domains(server, thomas):
    a = mc.unique_subject("to thomas at example.org")
    b = mc.unique_subject("to thomas at example.net")
    assert mc.send_inbound(server, OUTSIDE, ["thomas@example.org"], a) == {}
    assert mc.send_inbound(server, OUTSIDE, ["thomas@example.net"], b) == {}
    mc.imap_find(server, *thomas, a)
    mc.imap_find(server, *thomas, b)


@pytest.mark.parametrize("login", ["thomas", "thomas@example.org", "thomas@example.net"])
def test_login_with_and_without_domain(server, thomas, login):
    m = mc.imap_login(server, login, thomas[1])
    m.select("INBOX")
    m.logout()
    with mc.smtp(server, 587, "starttls") as s:
        s.login(login, thomas[1])


def test_sender_check_holds_for_a_login_with_domain(server, thomas):
    code, text = mc.rcpt_reply(server, 587, "starttls", "thomas@example.net", "friend@elsewhere.example",
                               login=("thomas@example.org", thomas[1]))
    assert code == 250, (code, text)
    code, text = mc.rcpt_reply(server, 587, "starttls", "anna@example.net", "friend@elsewhere.example",
                               login=("thomas@example.org", thomas[1]))
    assert code == 553, (code, text)


def test_special_use_mailboxes_exist(server, thomas):
    m = mc.imap_login(server, *thomas)
    try:
        typ, boxes = m.list()
        listing = b"\n".join(boxes).decode()
        for flag, name in [("\\Drafts", "Drafts"), ("\\Sent", "Sent"), ("\\Junk", "Junk"), ("\\Trash", "Trash")]:
            assert flag in listing and name in listing, listing
    finally:
        m.logout()


def test_quota_from_the_accounts_file_applies(host):
    out = host.bed.run(["doveadm", "quota", "get", "-u", "anna"], check=True).stdout
    storage = [l for l in out.splitlines() if "STORAGE" in l]
    assert storage and "51200" in storage[0], out  # 50M in KiB
    out = host.bed.run(["doveadm", "quota", "get", "-u", "thomas"], check=True).stdout
    assert "51200" not in out


# Last: failed logins make dovecot slow down this client address for a while.
def test_disabled_mailbox_cannot_log_in_but_keeps_its_mail(server, host):
    password = mailhost.PASSWORDS["carl"]
    with pytest.raises(imaplib.IMAP4.error):
        mc.imap_login(server, "carl", password)
    with mc.smtp(server, 465, "implicit") as s:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("carl", password)
    subject = mc.unique_subject("for disabled carl")
    assert mc.send_inbound(server, OUTSIDE, ["carl@example.org"], subject) == {}
    found = mc.wait_for(
        "the mail in carl's mailbox",
        lambda: host.bed.run(["doveadm", "search", "-u", "carl", "mailbox", "INBOX", "header", "Subject", subject]).stdout.strip(),
    )
    assert found


def test_wrong_password_fails(server, thomas):
    with pytest.raises(imaplib.IMAP4.error):
        mc.imap_login(server, "thomas", thomas[1] + "x")
    with mc.smtp(server, 587, "starttls") as s:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("thomas", thomas[1] + "x")
