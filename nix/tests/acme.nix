# postmaster gets the mail host's certificate from an ACME CA (pebble, as in
# nixpkgs' own ACME tests) with http-01 on port 80, through the socket systemd
# opens for it; a renewal is served on every port without restarting postfix or
# dovecot: postfix is reloaded, and postmaster's TLS front for IMAP, POP3 and
# ManageSieve swaps the certificate itself; dovecot is not even reloaded.
{ common, pkgs }:

let
  inherit (common) passwords;
  acmeServer = "${pkgs.path}/nixos/tests/common/acme/server";
in
{
  name = "postmaster-acme";

  nodes = {
    # pebble on https://acme.test/dir, and the test network's DNS (it learns
    # mail.example.org from the mail node's networking.extraHosts).
    acme = {
      imports = [ acmeServer ];
    };

    mail =
      { nodes, lib, ... }:
      {
        imports = [ (common.mailHost { accountsMode = "declared"; }) ];
        services.postmaster = {
          tls.source = lib.mkForce "acme";
          acme = {
            directory = "https://${nodes.acme.test-support.acme.caDomain}/dir";
            contact = [ "mailto:postmaster@example.org" ];
            # pebble's API is served with a certificate from nixpkgs' test CA.
            trustRoot = nodes.acme.test-support.acme.caCert;
          };
        };
        networking.nameservers = lib.mkForce [ nodes.acme.networking.primaryIPAddress ];
      };

    client =
      { nodes, lib, ... }:
      {
        imports = [ common.client ];
        networking.nameservers = lib.mkForce [ nodes.acme.networking.primaryIPAddress ];
        security.pki.certificateFiles = [ nodes.acme.test-support.acme.caCert ];
      };
  };

  testScript =
    { nodes, ... }:
    let
      caDomain = nodes.acme.test-support.acme.caDomain;
    in
    ''
      ${common.testLib}

      # The certificates pebble issues chain to a root it makes at every start.
      ROOT = "/tmp/pebble-root.pem"

      acme.start()
      acme.wait_for_unit("pebble.service")
      acme.wait_for_unit("bind.service")
      acme.wait_for_open_port(443)
      mail.start()
      client.start()
      wait_for_mail_host(mail)
      client.wait_for_unit("multi-user.target")

      with subtest("port 80 belongs to systemd's socket, handed to postmaster"):
          mail.succeed("systemctl is-active postmaster-acme.socket")
          mail.succeed("systemctl show --property=Listen --value postmaster-acme.socket | grep -q ':80'")

      with subtest("postmaster obtains a certificate from pebble and serves it on every port"):
          client.succeed(f"curl --fail --silent --show-error https://${caDomain}:15000/roots/0 > {ROOT}")
          first = client.wait_until_succeeds(f"postmaster-probe served --ca {ROOT}", timeout=300).strip()
          mail.wait_until_succeeds(
              f"postmaster status --json | jq -e '.certificate.fingerprint == \"{first}\""
              " and .certificate.source == \"acme\" and .certificate.verified.ok'"
          )
          mail.succeed("postmaster status")

      with subtest("mail flows with the ACME certificate"):
          client.succeed(
              f"postmaster-probe --ca {ROOT} submit thomas ${passwords.thomas}"
              " --from thomas@example.org --to anna@example.org --read anna:${passwords.anna}"
          )

      with subtest("a renewal is served on every port; postfix and dovecot are not restarted, dovecot not even reloaded"):
          before = main_pids(mail, ("postfix.service", "dovecot.service", "postmaster-tls.service"))
          dovecot = dovecot_state(mail)
          since = dovecot[1]
          mail.succeed("systemctl is-active postmaster-tls.socket postmaster-tls.service")
          mail.succeed("postmaster renew --force")
          # Every port, the front's five (993, 995, 143, 110, 4190) included.
          second = client.wait_until_succeeds(
              f"postmaster-probe served --ca {ROOT} --not {first}", timeout=300
          ).strip()
          assert second != first
          mail.wait_until_succeeds(
              f"postmaster status --json | jq -e '.certificate.fingerprint == \"{second}\""
              " and .certificate.verified.ok'"
          )
          assert_not_restarted(mail, before)
          # The front swapped the certificate on a reload (SIGHUP), in the same
          # process; dovecot, whose reloads fail the logins in flight, was left alone.
          mail.succeed(f"journalctl -u postmaster-tls.service --no-pager --since '{since}' | grep -q Reloaded")
          assert_dovecot_untouched(mail, dovecot)
          mail.succeed("systemctl is-active postmaster-tls.socket")
    '';
}
