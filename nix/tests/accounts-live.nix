# The admin edits the accounts file while the mail host runs: every change is
# live, and postfix and dovecot are never restarted.
{ common, ... }:

let
  inherit (common) passwords;
  dora = "dora-secret-4";
in
{
  name = "postmaster-accounts-live";

  nodes = {
    mail = common.mailHost { accountsMode = "file"; };
    client = common.client;
  };

  testScript = ''
    ${common.testLib}

    ACCOUNTS = "/etc/postmaster/accounts.toml"
    ALIASES = "hash:/var/lib/postmaster/generated/postfix/virtual_alias"
    MAILBOXES = "hash:/var/lib/postmaster/generated/postfix/virtual_mailbox"

    start_all()
    wait_for_mail_host(mail)
    client.wait_for_unit("multi-user.target")
    mail.wait_until_succeeds("postmaster status")
    mail.succeed(f"cp {ACCOUNTS} /root/seed.toml")
    before = main_pids(mail, ("postfix.service", "dovecot.service", "postmaster.service"))

    with subtest("the admin's accounts file is served"):
        client.succeed("postmaster-probe login thomas ${passwords.thomas}")
        client.succeed("postmaster-probe inbound --to anna@example.net --read anna:${passwords.anna}")

    with subtest("a mailbox appended in place can log in and receive mail"):
        mail.succeed(
            "hash=$(printf '%s\\n' ${dora} | postmaster hash-password)"
            " && printf '\\n[mailboxes.dora]\\npassword = \"%s\"\\n' \"$hash\" >> /root/dora.toml"
        )
        # [aliases] is the last table of the seed file: a new mailbox goes above it.
        mail.succeed(f"sed -n '1,/^\\[aliases\\]/p' {ACCOUNTS} | head -n -1 > /root/edit.toml")
        mail.succeed("cat /root/dora.toml >> /root/edit.toml && echo >> /root/edit.toml")
        mail.succeed(f"sed -n '/^\\[aliases\\]/,$p' {ACCOUNTS} >> /root/edit.toml")
        # Written over the old file in place (same inode), as `cat >` does.
        mail.succeed(f"cat /root/edit.toml > {ACCOUNTS}")
        mail.wait_until_succeeds(f"postmap -q dora@example.net {MAILBOXES}")
        mail.wait_until_succeeds("doveadm user dora")
        client.succeed("postmaster-probe login dora ${dora}")
        client.succeed(
            "postmaster-probe submit thomas ${passwords.thomas} --from thomas@example.org"
            " --to dora@example.net --read dora:${dora}"
        )

    with subtest("an alias added by replacing the file, as editors do, reaches both members"):
        # sed -i writes a new file and renames it over the old one.
        mail.succeed(
            f"sed -i 's/^\\[aliases\\]$/[aliases]\\n\"team@example.org\" = [\"thomas\", \"dora\"]/' {ACCOUNTS}"
        )
        mail.wait_until_succeeds(f"postmap -q team@example.org {ALIASES}")
        client.succeed(
            "postmaster-probe inbound --to team@example.org"
            " --read thomas:${passwords.thomas} --read dora:${dora}"
        )

    with subtest("dora may send as herself, not as the alias she shares with thomas"):
        client.succeed(
            "postmaster-probe submit dora ${dora} --from dora@example.org --to anna@example.org"
            " --read anna:${passwords.anna}"
        )
        client.fail("postmaster-probe submit dora ${dora} --from team@example.org --to anna@example.org")

    with subtest("a removed mailbox is refused at RCPT time"):
        mail.succeed(f"install -m 0640 -o root -g postmaster /root/seed.toml {ACCOUNTS}")
        mail.wait_until_fails(f"postmap -q dora@example.net {MAILBOXES}")
        client.succeed("postmaster-probe rcpt dora@example.net --expect 550")
        # example.org has a catch-all: dora@example.org now reaches thomas.
        client.succeed("postmaster-probe inbound --to dora@example.org --read thomas:${passwords.thomas}")
        mail.succeed("postmaster status")

    with subtest("postfix, dovecot and postmaster itself were never restarted"):
        assert_not_restarted(mail, before)
        mail.succeed("postmaster status --json | jq -e '.accounts.mailboxes == 3'")
  '';
}
