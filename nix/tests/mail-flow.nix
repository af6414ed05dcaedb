# The bed's scenario suite against the seed's mail host on NixOS, with the
# accounts declared in Nix (hashes from files in /run/secrets); then DKIM: what is
# submitted and what the host sends itself leaves signed by rspamd with the key
# postmaster keeps; the checks of port 25: GTUBE is refused at SMTP time; and
# learning: moving a message into Junk teaches rspamd's Bayes (in redis-rspamd).
{ common, ... }:

{
  name = "postmaster-mail-flow";

  nodes = {
    mail = common.mailHost { accountsMode = "declared"; };
    client = common.client;
  };

  testScript = ''
    import email
    import email.message
    import re
    import shlex
    import time

    ${common.testLib}

    start_all()
    wait_for_mail_host(mail)
    client.wait_for_unit("multi-user.target")

    with subtest("the declared accounts are written from the hash files; no hash is in the store"):
        mail.succeed("systemctl is-active postmaster-accounts.service")
        mail.succeed("test \"$(stat -c '%U:%G %a' /var/lib/postmaster/accounts.toml)\" = 'postmaster:postmaster 640'")
        hash = mail.succeed("cat /run/secrets/postmaster/thomas.hash").strip()
        mail.succeed(f"grep -qF '{hash}' /var/lib/postmaster/accounts.toml")
        script = mail.succeed(
            "systemctl show --property=ExecStart --value postmaster-accounts.service"
            " | grep -o '/nix/store/[^ ;]*' | head -n1"
        ).strip()
        template = mail.succeed(f"grep -o \"/nix/store/[^']*-postmaster-accounts.toml\" {script}").strip()
        mail.succeed(f"grep -qF '@POSTMASTER_PASSWORD_HASH_thomas@' {template}")
        mail.fail(f"grep -qF '{hash}' {script} {template} /etc/postmaster/config.toml")

    with subtest("postmaster reports a healthy mail host"):
        mail.succeed("postmaster check")
        mail.wait_until_succeeds("postmaster status")
        status = mail.succeed("postmaster status --json")
        mail.succeed("postmaster status --json | jq -e '.accounts.mailboxes == 3 and .accounts.errors == []'")
        print(status)

    with subtest("the passwd-file and the pair have the modes postfix and dovecot expect"):
        mail.succeed("test \"$(stat -c '%U:%G %a' /var/lib/postmaster/generated/dovecot/users)\" = 'postmaster:dovecot 640'")
        # The pair: the TLS front reads it as its group (the directory is setgid).
        mail.succeed("test \"$(stat -c '%U:%G %a' /var/lib/postmaster/tls)\" = 'postmaster:postmaster-tls 2750'")
        mail.succeed("test \"$(stat -c '%U:%G %a' /var/lib/postmaster/tls/pair.pem)\" = 'postmaster:postmaster-tls 640'")
        mail.succeed("postmap -q thomas@example.org hash:/var/lib/postmaster/generated/postfix/virtual_mailbox")
        mail.succeed("doveadm user thomas")

    with subtest("IMAP, POP3 and ManageSieve: systemd's sockets, postmaster's TLS front, dovecot on loopback behind it"):
        assert_tls_front(mail)

    with subtest("the bed's scenarios (tests/scenarios/test_mail_flow.py) pass"):
        client.succeed("postmaster-scenarios >&2")

    with subtest("dovecot saw the clients' addresses through the front (its PROXY header)"):
        assert_client_addresses(mail)

    with subtest("LMTP: deliveries go through postmaster-lmtp.socket and the relay, as postfix, and wait out a dovecot restart"):
        queue = "/var/lib/postfix/queue/private"
        mail.succeed(f"test \"$(stat -c '%F %U:%G %a' {queue}/postmaster-lmtp)\" = 'socket postfix:postfix 600'")
        mail.succeed("systemctl is-active postmaster-lmtp.socket postmaster-lmtp.service")
        mail.succeed("test \"$(ps -o user= -p $(systemctl show -P MainPID postmaster-lmtp.service))\" = postfix")
        mail.succeed("journalctl -u postfix --no-pager | grep 'status=sent' | grep -qF '[private/postmaster-lmtp]'")
        mail.fail("journalctl -u postfix --no-pager | grep 'status=sent' | grep -qF '[private/dovecot-lmtp]'")
        # dovecot down while a delivery arrives: the relay waits for it, postfix defers nothing.
        since = mail.succeed("date -d '-1 second' '+%Y-%m-%d %H:%M:%S'").strip()
        mail.succeed("systemctl stop dovecot.service")
        mail.succeed(
            "printf 'From: root@example.org\\nTo: thomas@example.org\\nSubject: lmtp-relay-waits\\n\\nwaited\\n'"
            " | sendmail -f root@example.org thomas@example.org"
        )
        mail.succeed("sleep 3")
        mail.succeed("systemctl start dovecot.service")
        mail.wait_until_succeeds("grep -rlF lmtp-relay-waits /var/vmail/thomas/Maildir | grep -q .", timeout=60)
        mail.fail(f"journalctl -u postfix --no-pager --since '{since}' | grep -q 'status=deferred'")
        mail.succeed(f"journalctl -u postmaster-lmtp --no-pager --since '{since}' | grep -qF 'greeted at try'")

    with subtest("DKIM: submitted and local mail leaves signed for its From domain, mail from port 25 passes unsigned"):
        mail.succeed("test \"$(stat -c '%U:%G %a' /var/lib/postmaster/dkim)\" = 'postmaster:rspamd 2750'")
        mail.succeed("test \"$(stat -c '%U:%G %a' /run/rspamd/rspamd-milter.sock)\" = 'rspamd:postfix 660'")
        selector = mail.succeed(
            "postmaster status --json | jq -r '.dkim.domains[] | select(.domain == \"example.org\")"
            " | .keys[] | select(.in_use) | .selector'"
        ).strip()
        assert selector, "no DKIM key in use for example.org"
        mail.succeed(f"grep -qF '{selector}' /var/lib/postmaster/generated/rspamd/dkim_domains.conf")

        def delivered(mailbox: str, subject: str) -> email.message.Message:
            path = mail.wait_until_succeeds(
                f"grep -rlF {shlex.quote(subject)} /var/vmail/{mailbox}/Maildir | head -n1 | grep .", timeout=60
            ).strip()
            return email.message_from_string(mail.succeed(f"cat {shlex.quote(path)}"))

        def dkim_tags(message: email.message.Message) -> dict[str, str]:
            header = message.get("DKIM-Signature")
            assert header is not None, f"not signed:\n{message}"
            tags = (t.split("=", 1) for t in "".join(str(header).split()).split(";") if "=" in t)
            return {k: v for k, v in tags}

        # Submitted on 587 by thomas, delivered to anna.
        subject = client.succeed(
            "postmaster-probe submit thomas thomas-secret-1 --from thomas@example.org"
            " --to anna@example.org --read anna:anna-secret-2"
        ).strip()
        tags = dkim_tags(delivered("anna", subject))
        assert (tags["d"], tags["s"]) == ("example.org", selector), tags

        # Sent by the host itself (sendmail: pickup, non_smtpd_milters).
        mail.succeed(
            "printf 'From: root@example.org\\nTo: thomas@example.org\\nSubject: dkim-local-mail\\n\\nsigned\\n'"
            " | sendmail -f root@example.org thomas@example.org"
        )
        tags = dkim_tags(delivered("thomas", "dkim-local-mail"))
        assert (tags["d"], tags["s"]) == ("example.org", selector), tags

        # From outside on port 25: checked by the same rspamd, never signed.
        subject = client.succeed(
            "postmaster-probe inbound --to thomas@example.org --read thomas:thomas-secret-1"
        ).strip()
        assert delivered("thomas", subject).get("DKIM-Signature") is None, "mail from port 25 was signed"

    with subtest("inbound checks: port 25 goes through rspamd; GTUBE is refused at SMTP time"):
        mail.succeed("postconf -h inbound_milters | grep -qF unix:/run/rspamd/rspamd-milter.sock")
        mail.succeed("postconf -P smtp/inet/smtpd_milters | grep -qxF 'smtp/inet/smtpd_milters = $inbound_milters'")
        # Only loopback is local to rspamd: the client (a LAN address) is checked.
        mail.succeed("grep -qxF 'local_addrs = [127.0.0.0/8, ::1];' /etc/rspamd/override.d/options.inc")
        # rspamd asks unbound on loopback alone, which listens nowhere else.
        mail.wait_for_unit("unbound.service")
        mail.succeed("grep -qF 'nameserver = [\"127.0.0.1:53\"];' /etc/rspamd/local.d/options.inc")
        listening = mail.succeed("ss -H -lnu 'sport = :53' | awk '{print $4}' | sort -u").split()
        assert listening == ["127.0.0.1:53"], f"unbound listens on {listening}"
        code = client.succeed("postmaster-probe gtube --to thomas@example.org").split()[0]
        assert code.startswith("5"), f"GTUBE refused with {code}, not a permanent error"
        mail.succeed("journalctl -u postfix --no-pager | grep -q 'milter-reject: END-OF-MESSAGE'")

    with subtest("learning: a move into Junk teaches rspamd spam, one out of Junk ham, into Trash nothing"):
        mail.wait_for_unit("redis-rspamd.service")
        # Bayes' store listens on its socket alone, rspamd's group may use it.
        mail.fail("ss -H -lnt | grep -q ':6379 '")
        mail.succeed("test \"$(stat -c %a /run/redis-rspamd/redis.sock)\" = 660")
        mail.succeed("grep -qxF 'servers = \"/run/redis-rspamd/redis.sock\";' /etc/rspamd/local.d/classifier-bayes.conf")
        controller = "rspamc --connect /run/rspamd-learn/controller.sock"

        def learned() -> dict[str, int]:
            out = mail.succeed(f"{controller} stat")
            counts = {m[1]: int(m[2]) for m in re.finditer(r"Statfile: (\w+) .*?learned: (-?\d+)", out)}
            assert {"BAYES_SPAM", "BAYES_HAM"} <= counts.keys(), out
            return counts

        def wait_learned(statfile: str, count: int) -> None:
            seen = learned()
            for _ in range(60):
                if seen[statfile] == count:
                    return
                time.sleep(1)
                seen = learned()
            raise AssertionError(f"{statfile} never reached {count}: {seen}")

        before = learned()
        subject = client.succeed(
            "postmaster-probe inbound --to thomas@example.org --read thomas:thomas-secret-1"
        ).strip()
        move = f"postmaster-probe move thomas thomas-secret-1 {shlex.quote(subject)}"
        client.succeed(f"{move} INBOX Junk")
        wait_learned("BAYES_SPAM", before["BAYES_SPAM"] + 1)
        client.succeed(f"{move} Junk INBOX")
        wait_learned("BAYES_HAM", before["BAYES_HAM"] + 1)
        # Deleting spam is no verdict.
        client.succeed(f"{move} INBOX Junk")
        wait_learned("BAYES_SPAM", before["BAYES_SPAM"] + 2)
        client.succeed(f"{move} Junk Trash")
        after = learned()
        assert after["BAYES_HAM"] == before["BAYES_HAM"] + 1, f"Junk -> Trash taught ham: {before} -> {after}"
        # Nobody but the mail user's group reaches the controller: no TCP port.
        mail.fail("ss -H -lnt | grep -q ':11334 '")

    with subtest("no scenario restarted postfix or dovecot"):
        for unit in ("postfix.service", "dovecot.service"):
            restarts = mail.succeed(f"systemctl show --property=NRestarts --value {unit}").strip()
            assert restarts == "0", f"{unit} restarted {restarts} times"
  '';
}
