# A broken accounts file never reaches postfix or dovecot: the last good accounts
# keep being served, and `postmaster status` (and systemd's status line) say what
# is wrong, as file:line:column.
{ common, ... }:

let
  inherit (common) passwords;
in
{
  name = "postmaster-broken-accounts";

  nodes = {
    mail = common.mailHost { accountsMode = "file"; };
    client = common.client;
  };

  testScript = ''
    ${common.testLib}

    ACCOUNTS = "/etc/postmaster/accounts.toml"


    def refused_at(line):
        """Waits until postmaster reports the accounts file refused at `line`;
        returns what `postmaster status` says (it exits 1: degraded)."""
        mail.wait_until_succeeds(f"postmaster status | grep -qF '{ACCOUNTS}:{line}:'")
        status = mail.fail("postmaster status")
        assert "DEGRADED" in status, status
        assert "the last good accounts keep being served" in status, status
        mail.succeed("systemctl show --property=StatusText --value postmaster.service | grep -qF 'ACCOUNTS FILE REFUSED'")
        return status


    def last_good_accounts_served():
        client.succeed("postmaster-probe login thomas ${passwords.thomas}")
        client.succeed("postmaster-probe inbound --to anna@example.net --read anna:${passwords.anna}")
        client.succeed("postmaster-probe rcpt eve@example.net --expect 550")


    start_all()
    wait_for_mail_host(mail)
    client.wait_for_unit("multi-user.target")
    mail.wait_until_succeeds("postmaster status")
    mail.succeed(f"cp {ACCOUNTS} /root/good.toml")
    before = main_pids(mail, ("postfix.service", "dovecot.service", "postmaster.service"))
    generated = mail.succeed("sha256sum /var/lib/postmaster/generated/*/*")

    with subtest("a mailbox with a password that is not a hash is refused, with its position"):
        mail.succeed(f"printf '\\n[mailboxes.eve]\\npassword = \"not-a-hash\"\\n' >> {ACCOUNTS}")
        line = mail.succeed(f"grep -n 'not-a-hash' {ACCOUNTS} | cut -d: -f1").strip()
        status = refused_at(line)
        print(status)
        last_good_accounts_served()

    with subtest("a TOML syntax error is refused, with its position"):
        mail.succeed(f"cp /root/good.toml {ACCOUNTS} && printf '\\n[mailboxes.frank\\n' >> {ACCOUNTS}")
        line = mail.succeed(f"grep -n '^\\[mailboxes.frank' {ACCOUNTS} | cut -d: -f1").strip()
        refused_at(line)
        last_good_accounts_served()

    with subtest("an alias to a mailbox that does not exist is refused"):
        mail.succeed(f"cp /root/good.toml {ACCOUNTS} && printf '\"ghost@example.org\" = \"nobody-here\"\\n' >> {ACCOUNTS}")
        line = mail.succeed(f"grep -n 'nobody-here' {ACCOUNTS} | cut -d: -f1").strip()
        refused_at(line)
        last_good_accounts_served()

    with subtest("nothing generated changed while the file was broken"):
        assert mail.succeed("sha256sum /var/lib/postmaster/generated/*/*") == generated

    with subtest("the fixed file is applied at once"):
        mail.succeed(
            "cp /root/good.toml /root/fixed.toml"
            " && hash=$(printf '%s\\n' eve-secret-5 | postmaster hash-password)"
            " && sed -i \"s|^\\[aliases\\]$|[mailboxes.eve]\\npassword = \\\"$hash\\\"\\n\\n[aliases]|\" /root/fixed.toml"
            f" && cat /root/fixed.toml > {ACCOUNTS}"
        )
        mail.wait_until_succeeds("postmaster status")
        client.succeed("postmaster-probe login eve eve-secret-5")
        client.succeed("postmaster-probe rcpt eve@example.net --expect 250")

    with subtest("postfix, dovecot and postmaster itself were never restarted"):
        assert_not_restarted(mail, before)
  '';
}
