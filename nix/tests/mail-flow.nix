# The bed's scenario suite against the seed's mail host on NixOS, with the
# accounts declared in Nix (hashes from files in /run/secrets).
{ common, ... }:

{
  name = "postmaster-mail-flow";

  nodes = {
    mail = common.mailHost { accountsMode = "declared"; };
    client = common.client;
  };

  testScript = ''
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
        mail.succeed("test \"$(stat -c '%a' /var/lib/postmaster/tls/pair.pem)\" = 600")
        mail.succeed("postmap -q thomas@example.org hash:/var/lib/postmaster/generated/postfix/virtual_mailbox")
        mail.succeed("doveadm user thomas")

    with subtest("the bed's scenarios (tests/scenarios/test_mail_flow.py) pass"):
        client.succeed("postmaster-scenarios >&2")

    with subtest("no scenario restarted postfix or dovecot"):
        for unit in ("postfix.service", "dovecot.service"):
            restarts = mail.succeed(f"systemctl show --property=NRestarts --value {unit}").strip()
            assert restarts == "0", f"{unit} restarted {restarts} times"
  '';
}
