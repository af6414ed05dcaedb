# What the NixOS VM tests share: the seed's mail host as a NixOS node, a client
# node with the bed's own scenario tests, a test CA, and Python helpers for the
# test scripts.
#
# The checks from outside are the bed's: tests/scenarios/mailclient.py and
# tests/scenarios/test_mail_flow.py are copied into the client unchanged, with a
# conftest.py of our own (scenarios/conftest.py) that points them at the mail node.
# So the Debian bed and the NixOS tests cannot drift apart.
{ pkgs, module }:

let
  inherit (pkgs) lib;

  hostName = "mail.example.org";
  domains = [
    "example.org"
    "example.net"
  ];

  # The test users' passwords: the same as tests/lib/mailhost.py's PASSWORDS,
  # which test_mail_flow.py reads through the mailhost.py made below.
  passwords = {
    thomas = "thomas-secret-1";
    anna = "anna-secret-2";
    carl = "carl-secret-3";
  };
  # One scheme each, as in the bed.
  schemes = {
    thomas = "SHA512-CRYPT";
    anna = "BLF-CRYPT";
    carl = "ARGON2ID";
  };

  # The seed's accounts as in tests/lib/mailhost.py: thomas has the catch-all of
  # example.org; anna is a real mailbox it must never swallow, with a quota; carl
  # is disabled. example.net has no catch-all.
  accounts = {
    mailboxes = {
      thomas.passwordHashFile = "/run/secrets/postmaster/thomas.hash";
      anna = {
        passwordHashFile = "/run/secrets/postmaster/anna.hash";
        quota = "50M";
      };
      carl = {
        passwordHashFile = "/run/secrets/postmaster/carl.hash";
        disabled = true;
      };
    };
    aliases = {
      postmaster = "thomas";
      abuse = "thomas";
      "sales@example.org" = [
        "thomas"
        "anna"
      ];
      "info@example.net" = "anna";
    };
    catchAll."example.org" = "thomas";
  };

  # A throwaway CA and a certificate for the mail host, made at build time (test
  # data only). Layout as the scenarios expect: ca.pem, tls/fullchain.pem,
  # tls/privkey.pem.
  pki =
    pkgs.runCommand "postmaster-test-pki"
      {
        nativeBuildInputs = [ pkgs.openssl ];
      }
      ''
        mkdir -p $out/tls
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
          -subj "/CN=postmaster test CA" -keyout ca.key -out $out/ca.pem \
          -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
        printf '%s\n' "subjectAltName=DNS:${hostName}" \
          "basicConstraints=critical,CA:FALSE" "extendedKeyUsage=serverAuth" > leaf.ext
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
          -subj "/CN=${hostName}" -keyout $out/tls/privkey.pem -out leaf.csr
        openssl x509 -req -in leaf.csr -CA $out/ca.pem -CAkey ca.key -CAcreateserial \
          -days 3650 -extfile leaf.ext -out leaf.pem
        cat leaf.pem $out/ca.pem > $out/tls/fullchain.pem
      '';

  python = pkgs.python3.withPackages (ps: [ ps.pytest ]);

  # tests/lib/mailhost.py, as far as test_mail_flow.py uses it.
  mailhostShim = pkgs.writeText "mailhost.py" ''
    """The bed's tests/lib/mailhost.py, as far as the scenarios use it (made by nix/tests/common.nix)."""

    PASSWORDS = ${builtins.toJSON passwords}
  '';

  scenarios = pkgs.runCommand "postmaster-scenarios" { } ''
    mkdir -p $out
    cp ${../../tests/scenarios/mailclient.py} $out/mailclient.py
    cp ${../../tests/scenarios/test_mail_flow.py} $out/test_mail_flow.py
    cp ${./scenarios/conftest.py} $out/conftest.py
    cp ${./scenarios/probe.py} $out/probe.py
    cp ${mailhostShim} $out/mailhost.py
  '';

  sshKeys = import "${pkgs.path}/nixos/tests/ssh-keys.nix" pkgs;

  # Where the client finds the mail host and what it trusts.
  clientEnv = ''
    export PYTHONDONTWRITEBYTECODE=1
    export POSTMASTER_TEST_SERVER="''${POSTMASTER_TEST_SERVER:-mail}"
    export POSTMASTER_TEST_CA="''${POSTMASTER_TEST_CA:-${pki}/ca.pem}"
    export POSTMASTER_TEST_PKI=${pki}
    export POSTMASTER_TEST_SSH=root@mail
    export POSTMASTER_TEST_SSH_KEY=/etc/postmaster-tests/ssh-key
    export POSTMASTER_TEST_SSH_BIN=${pkgs.openssh}/bin/ssh
  '';

  # The bed's scenario tests, unchanged, against the mail node.
  runScenarios = pkgs.writeShellScriptBin "postmaster-scenarios" ''
    ${clientEnv}
    cd ${scenarios}
    exec ${python}/bin/python3 -m pytest -v -p no:cacheprovider "$@" test_mail_flow.py
  '';

  # Single checks for the test scripts (scenarios/probe.py), over mailclient.py.
  probe = pkgs.writeShellScriptBin "postmaster-probe" ''
    ${clientEnv}
    exec ${python}/bin/python3 ${scenarios}/probe.py "$@"
  '';

  # Hashes of the test passwords in /run/secrets at boot, made with postmaster
  # itself: what sops-nix or agenix would put there. Never in the Nix store.
  testSecrets =
    { config, ... }:
    {
      systemd.services.test-secrets = {
        description = "Test secrets: password hashes for services.postmaster.accounts";
        wantedBy = [ "postmaster-accounts.service" ];
        before = [ "postmaster-accounts.service" ];
        path = [ config.services.postmaster.package ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
        };
        script = ''
          install -d -m 0700 /run/secrets/postmaster
          ${lib.concatStrings (
            lib.mapAttrsToList (name: password: ''
              printf '%s\n' ${lib.escapeShellArg password} \
                | postmaster hash-password --scheme ${schemes.${name}} \
                > /run/secrets/postmaster/${name}.hash
            '') passwords
          )}
          chmod 0400 /run/secrets/postmaster/*.hash
        '';
      };
    };

  # The accounts as a file the admin edits (services.postmaster.accountsFile): the
  # same accounts, written once at boot before postmaster starts, with hashes made
  # there. Stands in for an admin who wrote the file by hand.
  seedAccountsFile =
    { config, ... }:
    {
      systemd.services.test-seed-accounts = {
        description = "Test: the admin's first accounts file";
        wantedBy = [
          "postmaster-setup.service"
          "postmaster.service"
        ];
        before = [
          "postmaster-setup.service"
          "postmaster.service"
        ];
        after = [ "systemd-tmpfiles-setup.service" ];
        path = [ config.services.postmaster.package ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
        };
        script = ''
          file=${config.services.postmaster.accountsFile}
          grep -q '^\[mailboxes\.' "$file" 2>/dev/null && exit 0
          hash() { printf '%s\n' "$1" | postmaster hash-password --scheme "$2"; }
          cat > "$file.new" <<EOF
          [mailboxes.thomas]
          password = "$(hash ${lib.escapeShellArg passwords.thomas} ${schemes.thomas})"

          [mailboxes.anna]
          password = "$(hash ${lib.escapeShellArg passwords.anna} ${schemes.anna})"
          quota = "50M"

          [mailboxes.carl]
          password = "$(hash ${lib.escapeShellArg passwords.carl} ${schemes.carl})"
          disabled = true

          [catch_all]
          "example.org" = "thomas"

          [aliases]
          postmaster = "thomas"
          abuse = "thomas"
          "sales@example.org" = ["thomas", "anna"]
          "info@example.net" = "anna"
          EOF
          chown root:postmaster "$file.new"
          chmod 0640 "$file.new"
          mv "$file.new" "$file"
        '';
      };
    };

  # The seed's mail host. `accountsMode`: "declared" (services.postmaster.accounts
  # with hash files) or "file" (an accounts file the admin edits).
  mailHost =
    {
      accountsMode ? "declared",
    }:
    { config, ... }:
    {
      imports = [
        module
        (if accountsMode == "declared" then testSecrets else seedAccountsFile)
      ];

      services.postmaster = {
        enable = true;
        inherit hostName domains;
        openFirewall = true;
        # The test network has no DNS for the senders' domains.
        rejectUnknownSenderDomain = false;
        tls = {
          source = lib.mkDefault "files";
          cert = lib.mkDefault "${pki}/tls/fullchain.pem";
          key = lib.mkDefault "${pki}/tls/privkey.pem";
        };
      }
      // lib.optionalAttrs (accountsMode == "declared") {
        accountsFile = null;
        inherit accounts;
      };

      # Other nodes (and pebble) find the mail host by its name.
      networking.extraHosts = "${config.networking.primaryIPAddress} ${hostName}";

      # The inbound checks' resolver (unbound): the test network has no DNS and
      # no Internet, so it answers every name itself ("no such name": no SPF, no
      # DMARC record) instead of failing to reach the root servers, which would
      # defer every message on port 25 (a DNS failure is not a missing record).
      services.unbound.settings.server.local-zone = [ ". static" ];

      # The client runs the bed's scenarios, some of which look inside the mail
      # host (doveadm quota, doveadm search): over ssh, as root.
      services.openssh.enable = true;
      users.users.root.openssh.authorizedKeys.keys = [ sshKeys.snakeOilPublicKey ];

      environment.systemPackages = [ pkgs.jq ];
      # rspamd (DKIM signing) takes a few hundred MiB beside postfix and dovecot.
      virtualisation.memorySize = 1536;
    };

  client =
    { ... }:
    {
      environment.systemPackages = [
        runScenarios
        probe
        pkgs.openssl
        pkgs.curl
      ];
      environment.etc."postmaster-tests/ssh-key" = {
        source = sshKeys.snakeOilPrivateKey;
        mode = "0600";
      };
    };

  # Python for the test scripts (the driver's side).
  testLib = ''
    # postmaster's TLS front holds these (postmaster-tls.socket): IMAP and POP3
    # with implicit TLS, IMAP, POP3 and ManageSieve with STARTTLS.
    FRONT_PORTS = [993, 995, 143, 110, 4190]
    MAIL_PORTS = [25, 465, 587] + FRONT_PORTS
    # Where dovecot listens behind the front: loopback alone.
    DOVECOT_BEHIND_FRONT = ["127.0.0.1:10110", "127.0.0.1:10143", "127.0.0.1:14190"]


    def wait_for_mail_host(machine):
        """postmaster, postfix, dovecot, rspamd and the TLS front's sockets up,
        every mail port open, and rspamd's milter there: until then submitted mail
        is refused for later (451)."""
        for unit in (
            "postmaster.service",
            "postfix.service",
            "dovecot.service",
            "rspamd.service",
            "postmaster-tls.socket",
        ):
            machine.wait_for_unit(unit)
        for port in MAIL_PORTS:
            machine.wait_for_open_port(port)
        machine.wait_for_file("/run/rspamd/rspamd-milter.sock")


    def assert_tls_front(machine):
        """IMAP, POP3 and ManageSieve: systemd holds the public ports and hands
        them to postmaster's TLS front, which runs as its own user; dovecot
        listens on loopback alone, behind it."""
        machine.succeed("systemctl is-active postmaster-tls.socket")
        for port in FRONT_PORTS:
            holders = machine.succeed(f"ss -Hltnp 'sport = :{port}'")
            assert '"systemd"' in holders, f"port {port} is not systemd's: {holders}"
            assert "dovecot" not in holders and "-login" not in holders, f"dovecot on port {port}: {holders}"
        # wait_for_mail_host connected to every port: the socket started the front.
        machine.wait_for_unit("postmaster-tls.service")
        # user:32: ps shows a name longer than 8 characters as its uid otherwise.
        user = machine.succeed("ps -o user:32= -p $(systemctl show -P MainPID postmaster-tls.service)").strip()
        assert user == "postmaster-tls", f"the front runs as {user}"
        dovecot = sorted(set(machine.succeed(
            "ss -Hltnp | grep -E '\"(dovecot|imap-login|pop3-login|managesieve-login)\"' | awk '{print $4}'"
        ).split()))
        assert dovecot == DOVECOT_BEHIND_FRONT, f"dovecot listens on {dovecot}"


    def login_addresses(machine):
        """The client addresses of every login dovecot logged (2.3: "Login:", 2.4:
        "Logged in:"): through the front, those its PROXY header gave."""
        journal = machine.succeed("journalctl -u dovecot.service --no-pager")
        return {
            line.split("rip=", 1)[1].split(",", 1)[0]
            for line in journal.splitlines()
            if "-login: " in line and (" Login: " in line or " Logged in: " in line) and "rip=" in line
        }


    def assert_client_addresses(machine):
        """dovecot saw the clients' own addresses, never the front's loopback one."""
        addresses = login_addresses(machine)
        assert addresses, "dovecot logged no login"
        assert not addresses & {"127.0.0.1", "::1"}, f"logins from the front's address: {addresses}"


    def main_pids(machine, units=("postfix.service", "dovecot.service")):
        """The main PID of each unit: unchanged means not restarted."""
        return {
            unit: machine.succeed(f"systemctl show --property=MainPID --value {unit}").strip()
            for unit in units
        }


    def assert_not_restarted(machine, before):
        after = main_pids(machine, tuple(before))
        assert after == before, f"restarted: before {before}, after {after}"
        for unit in before:
            restarts = machine.succeed(f"systemctl show --property=NRestarts --value {unit}").strip()
            assert restarts in ("", "0"), f"{unit} restarted {restarts} times"


    def dovecot_state(machine):
        """dovecot's main PID, and the time from which its journal must not show a
        reload (assert_dovecot_untouched)."""
        pid = machine.succeed("systemctl show --property=ExecMainPID --value dovecot.service").strip()
        since = machine.succeed("date '+%Y-%m-%d %H:%M:%S'").strip()
        return pid, since


    def assert_dovecot_untouched(machine, state):
        """dovecot was neither restarted nor reloaded since dovecot_state: every
        reload replaces its auth process and fails the logins in flight."""
        pid, since = state
        now = machine.succeed("systemctl show --property=ExecMainPID --value dovecot.service").strip()
        assert now == pid, f"dovecot restarted: main PID {pid}, now {now}"
        journal = machine.succeed(f"journalctl -u dovecot.service --no-pager --since '{since}'")
        for line in journal.splitlines():
            assert "SIGHUP received" not in line and "reload" not in line.lower(), f"dovecot reloaded: {line}"
  '';
in
{
  inherit
    accounts
    client
    domains
    hostName
    mailHost
    passwords
    pki
    schemes
    testLib
    ;
}
