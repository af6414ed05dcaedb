# The mail host on Dovecot 2.3: a system whose system.stateVersion is older than
# 26.05 keeps nixpkgs' dovecot_2_3, and services.postmaster gives it the 2.3
# settings (passdb/userdb args, ssl_cert, mail_location, the quota plugin). The
# bed's scenario suite runs against it, as in mail-flow.
{ common, ... }:

{
  name = "postmaster-dovecot23";

  nodes = {
    mail = {
      imports = [ (common.mailHost { accountsMode = "declared"; }) ];
      system.stateVersion = "25.11";
    };
    client = common.client;
  };

  testScript = ''
    ${common.testLib}

    start_all()
    wait_for_mail_host(mail)
    client.wait_for_unit("multi-user.target")

    with subtest("dovecot is 2.3, and postmaster renders for 2.3"):
        version = mail.succeed("dovecot --version").strip()
        assert version.startswith("2.3."), version
        mail.succeed("grep -qx 'version = \"2.3\"' /etc/postmaster/config.toml")
        mail.succeed("doveconf -n | grep -qF 'args = /var/lib/postmaster/generated/dovecot/users'")
        mail.wait_until_succeeds("postmaster status")

    with subtest("dovecot's auth process reads the passwd-file (postmaster:dovecot 0640)"):
        mail.succeed("test \"$(stat -c '%U:%G %a' /var/lib/postmaster/generated/dovecot/users)\" = 'postmaster:dovecot 640'")
        mail.succeed("doveadm user thomas")
        mail.succeed("doveadm auth test thomas ${common.passwords.thomas}")

    with subtest("dovecot 2.3 behind postmaster's TLS front, on loopback alone"):
        assert_tls_front(mail)
        mail.succeed("doveconf -h haproxy_trusted_networks | grep -qx 127.0.0.1/32")

    with subtest("the bed's scenarios (tests/scenarios/test_mail_flow.py) pass"):
        client.succeed("postmaster-scenarios >&2")

    with subtest("dovecot 2.3 saw the clients' addresses through the front (its PROXY header)"):
        assert_client_addresses(mail)
  '';
}
