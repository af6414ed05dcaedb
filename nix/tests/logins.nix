# Password guessing (services.postmaster.logins), as tests/scenarios/test_logins.py
# on Debian: after repeated failed logins from one address (IMAP, POP3 and SMTP
# AUTH alike) its logins are refused, even with the right password, while
# another address logs in as before; `postmaster status` lists the block and
# `postmaster unblock` lifts it. dovecot's auth asks postmaster through the auth
# policy block the module includes into dovecot.conf, and postmaster answers it
# because `[logins] policy_clients` names the user that auth really runs as;
# any other local user is refused.
{ common, pkgs, ... }:

let
  inherit (common) passwords;
in
{
  name = "postmaster-logins";

  nodes = {
    mail = {
      imports = [ (common.mailHost { accountsMode = "declared"; }) ];
      # Low, so that the test guesses little; the window and the block are long
      # enough not to end while it runs.
      services.postmaster.logins = {
        blockAfterFailures = 3;
        failureWindowSeconds = 600;
        blockSeconds = 600;
      };
      # To speak to the policy listener as dovecot's auth does, as root and as
      # another user.
      environment.systemPackages = [ pkgs.curl ];
    };
    # The guesser, and another address on the same network.
    client = common.client;
    client2 = common.client;
  };

  testScript = ''
    ${common.testLib}

    import json

    start_all()
    wait_for_mail_host(mail)
    client.wait_for_unit("multi-user.target")
    client2.wait_for_unit("multi-user.target")
    mail.wait_until_succeeds("postmaster status")

    # Over IPv4: the test network's IPv6 addresses share one /64, which the guard
    # counts as one address.
    mail_ip = client.succeed("getent ahostsv4 mail.example.org | awk 'NR == 1 { print $1 }'").strip()
    guesser = client.succeed("ip -4 -o addr show dev eth1 | awk '{ print $4 }' | cut -d/ -f1").strip()
    other = client2.succeed("ip -4 -o addr show dev eth1 | awk '{ print $4 }' | cut -d/ -f1").strip()
    assert mail_ip and guesser and other and len({mail_ip, guesser, other}) == 3, (mail_ip, guesser, other)


    def login(protocol, password):
        # dovecot delays the logins of an address after its failures (up to 15 s,
        # more under TCG).
        return f"postmaster-probe --server {mail_ip} --timeout 60 login --protocol {protocol} thomas {password}"


    def status():
        # Its exit code says whether the host is healthy (DKIM records are
        # missing here); the JSON is printed either way.
        return json.loads(mail.execute("postmaster status --json")[1])["logins"]


    def report_failure(address, user=None):
        """Reports a failed IMAP login of `address` to the policy listener, as
        dovecot's auth does; as root, or as `user`."""
        body = json.dumps({"remote": address, "protocol": "imap", "success": False, "policy_reject": False})
        command = f"curl -sf --max-time 10 -d '{body}' 'http://127.0.0.1:10041/?command=report'"
        if user is not None:
            command = f"setpriv --reuid={user} --regid=nogroup --clear-groups {command}"
        return mail.execute(command)[0]


    with subtest("dovecot asks postmaster before each login, and postmaster answers its auth"):
        mail.succeed("doveconf -n | grep -qxF 'auth_policy_server_url = http://127.0.0.1:10041/'")
        # The listener is bound and every user policy_clients names exists here.
        logins = status()
        assert logins["block_after_failures"] == 3 and logins["error"] is None, logins
        assert logins["blocked"] == [], logins

    with subtest("the guesser logs in before it guesses, through an auth process postmaster answers"):
        client.succeed(login("imap", "${passwords.thomas}"))
        # Through the TLS front: dovecot (so the guard) sees the guesser's own
        # address, which the front's PROXY header carries.
        assert guesser in login_addresses(mail), login_addresses(mail)
        # Right after a login dovecot's auth process runs (it may end when idle):
        # as root, or as the user policy_clients names.
        auth_user = mail.succeed("ps -o user= -C auth | sort -u").strip()
        clients = mail.succeed("grep '^policy_clients' /etc/postmaster/config.toml")
        assert auth_user == "root" or f'"{auth_user}"' in clients, (auth_user, clients)

    with subtest("three wrong passwords (IMAP, POP3, SMTP AUTH) block the guesser's address"):
        client.fail(login("imap", "guess-1"))
        client.fail(login("pop3", "guess-2"))
        client.fail(login("smtp", "guess-3"))
        # Now even the right password is refused from there, on every protocol...
        for protocol in ("imap", "pop3", "smtp"):
            client.fail(login(protocol, "${passwords.thomas}"))
        # ...while another address logs in everywhere.
        for protocol in ("imap", "pop3", "smtp"):
            client2.succeed(login(protocol, "${passwords.thomas}"))

    with subtest("postmaster status lists the block"):
        blocked = status()["blocked"]
        assert [b["address"] for b in blocked] == [guesser], blocked
        assert blocked[0]["failures"] == 3, blocked
        text = mail.execute("postmaster status")[1]
        assert f"{guesser} blocked until" in text and f"postmaster unblock {guesser}" in text, text

    with subtest("postmaster unblock lifts it at once"):
        out = mail.succeed(f"postmaster unblock {guesser}")
        assert f"{guesser} may log in again" in out, out
        assert status()["blocked"] == []
        client.succeed(login("imap", "${passwords.thomas}"))
        client.succeed(login("smtp", "${passwords.thomas}"))

    with subtest("only dovecot's auth (and root) may report failures"):
        victim = "192.0.2.99"
        assert report_failure(victim, user="nobody") != 0
        assert victim not in [b["address"] for b in status()["blocked"]]
        mail.succeed("journalctl -u postmaster.service | grep -qF \"not made by dovecot's auth\"")
        for _ in range(3):
            assert report_failure(victim) == 0
        assert victim in [b["address"] for b in status()["blocked"]]
        mail.succeed(f"postmaster unblock {victim}")
  '';
}
