# A developer check of nix/module.nix without nixpkgs' NixOS modules: nixpkgs'
# lib alone (e.g. the nix-community/nixpkgs.lib repository) and stub declarations
# of the options the module sets (services.postfix, services.dovecot2, systemd, …).
#
#   nix-instantiate --eval --strict nix/tests/module-eval.nix \
#     --arg lib 'import /path/to/nixpkgs.lib/lib' -A summary
#
# The stubs accept any value, so this proves what the module itself computes
# (postfix and dovecot settings, units, assertions and their messages), not that
# nixpkgs' modules accept it: the VM tests do that. Throws on the first mismatch.
# tests/nix-checks.sh runs it when POSTMASTER_NIXPKGS_LIB points at such a lib.
{ lib }:

let
  inherit (lib) mkOption types;

  # Like types.anything, but lists from several definitions are concatenated
  # (systemd's `wants`, `after`, … are lists set in more than one place).
  loose = lib.mkOptionType {
    name = "loose";
    description = "anything (stub)";
    check = _: true;
    merge =
      loc: defs:
      if builtins.all (d: builtins.isAttrs d.value && !(lib.isStringLike d.value)) defs then
        (types.attrsOf loose).merge loc defs
      else if builtins.all (d: builtins.isList d.value) defs then
        builtins.concatMap (d: d.value) defs
      else
        lib.mergeEqualOption loc defs;
  };
  stub = mkOption {
    type = loose;
    default = { };
  };

  fakeDrv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta.mainProgram = name;
  };

  pkgs = {
    formats.toml = _: {
      type = loose;
      # The value itself rides along, for the checks below to read.
      generate = name: value: fakeDrv name // { inherit value; };
    };
    # Files: a name and the text, for the checks below to read.
    writeText = name: text: fakeDrv name // { inherit text; };
    writeShellScript = name: text: fakeDrv name // { inherit text; };
    writeTextDir = path: text: fakeDrv (baseNameOf path) // { inherit text; };
    callPackage = _: _: fakeDrv "postmaster";
    openssl = fakeDrv "openssl";
  };

  stubs = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      environment = stub;
      networking = mkOption {
        default = { };
        type = types.submodule {
          freeformType = types.lazyAttrsOf loose;
          # The VM tests' nodes read it while setting networking.extraHosts.
          options.primaryIPAddress = mkOption { type = types.str; };
        };
      };
      security = stub;
      systemd = stub;
      users = stub;
      services.dbus = stub;
      services.nginx = stub;
      # Set by the VM tests' nodes (nix/tests/common.nix).
      services.openssh = stub;
      virtualisation = stub;
      services.postfix = mkOption {
        default = { };
        type = types.submodule {
          freeformType = types.lazyAttrsOf loose;
          options = {
            package = mkOption { default = fakeDrv "postfix"; };
            user = mkOption { default = "postfix"; };
            group = mkOption { default = "postfix"; };
            settings.main = mkOption {
              default = { };
              type = types.submodule {
                freeformType = types.lazyAttrsOf loose;
                # nixpkgs' postfix module sets it (mkDefault).
                options.queue_directory = mkOption { default = "/var/lib/postfix/queue"; };
              };
            };
          };
        };
      };
      services.dovecot2 = mkOption {
        default = { };
        type = types.submodule {
          freeformType = types.lazyAttrsOf loose;
          options = {
            package = mkOption {
              default = fakeDrv "dovecot" // {
                version = "2.4.1";
              };
            };
            group = mkOption {
              type = types.str;
              default = "dovecot2";
            };
            settings = stub;
          };
        };
      };
    };
  };

  eval =
    config:
    (lib.evalModules {
      modules = [
        stubs
        ../module.nix
        config
        {
          _module.args = {
            inherit pkgs;
            # What the VM tests' nodes read of the other nodes.
            nodes.acme = {
              test-support.acme = {
                caDomain = "acme.test";
                caCert = "/nix/store/00000000000000000000000000000000-ca.cert.pem";
              };
              networking.primaryIPAddress = "192.168.1.3";
            };
          };
          networking.primaryIPAddress = "192.168.1.2";
        }
      ];
    }).config;

  # The mail nodes of the VM tests (nix/tests/common.nix, acme.nix), evaluated
  # with the module: their configurations must pass its assertions.
  testPkgs = pkgs // {
    inherit lib;
    path = "/nixpkgs";
    runCommand =
      name: _: _:
      fakeDrv name;
    writeShellScriptBin = name: _: fakeDrv name;
    python3.withPackages = _: fakeDrv "python3";
    openssh = fakeDrv "openssh";
    jq = fakeDrv "jq";
    curl = fakeDrv "curl";
  };
  testCommon = import ./common.nix {
    pkgs = testPkgs;
    module = ../module.nix;
  };
  testNodes = {
    declared = eval (testCommon.mailHost { accountsMode = "declared"; });
    file = eval (testCommon.mailHost { accountsMode = "file"; });
    acme =
      eval
        (import ./acme.nix {
          common = testCommon;
          pkgs = testPkgs;
        }).nodes.mail;
  };

  base = {
    services.postmaster = {
      enable = true;
      hostName = "mail.example.org";
      domains = [
        "example.org"
        "example.net"
      ];
      tls = {
        source = "files";
        cert = "/etc/ssl/mail/fullchain.pem";
        key = "/etc/ssl/mail/key.pem";
      };
    };
  };

  declaredAccounts = {
    services.postmaster = {
      accountsFile = null;
      accounts = {
        mailboxes = {
          thomas.passwordHashFile = "/run/secrets/thomas.hash";
          anna = {
            passwordHashFile = "/run/secrets/anna.hash";
            quota = "50M";
          };
        };
        catchAll."example.org" = "thomas";
      };
    };
  };

  failing = config: map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);

  check =
    name: actual: expected:
    if actual == expected then
      name
    else
      throw "nix/tests/module-eval.nix: ${name}: expected ${builtins.toJSON expected}, got ${builtins.toJSON actual}";

  # Passes when exactly one assertion fails and its message contains `text`.
  refuses =
    name: config: text:
    let
      messages = failing config;
    in
    if builtins.length messages == 1 && lib.hasInfix text (builtins.head messages) then
      name
    else
      throw "nix/tests/module-eval.nix: ${name}: expected one failing assertion mentioning `${text}`, got ${builtins.toJSON messages}";

  tomlOf = config: config.environment.etc."postmaster/config.toml".source.value;

  full = eval {
    imports = [
      base
      declaredAccounts
    ];
  };
  fullMain = full.services.postfix.settings.main;
  fullDovecot = full.services.dovecot2.settings;
  fullUnit = full.systemd.services.postmaster;

  adminFile = eval base;

  dovecot23 = eval {
    imports = [ base ];
    services.dovecot2.package = fakeDrv "dovecot" // {
      version = "2.3.21";
    };
  };

  acmeModule = {
    imports = [ base ];
    services.postmaster.tls.source = lib.mkForce "acme";
    services.postmaster.acme.contact = [ "mailto:postmaster@example.org" ];
    services.postmaster.openFirewall = true;
  };
  acme = eval acmeModule;

  # Forces every value the module defines, so an evaluation error anywhere in them
  # (not only in what the checks below look at) fails this file.
  everything =
    c:
    builtins.deepSeq [
      c.assertions
      c.warnings
      c.environment
      c.networking
      c.security
      c.systemd
      c.users
      c.services.dbus
      c.services.postfix
      c.services.dovecot2.settings
      c.services.dovecot2.group
    ] true;

  results = [
    (check "the VM tests' mail nodes evaluate (but for their ssh keys, from nixpkgs)"
      (map
        (
          c:
          builtins.deepSeq [
            c.environment
            c.networking
            c.security
            c.systemd
            c.services.postfix
            c.services.dovecot2.settings
          ] true
        )
        [
          testNodes.declared
          testNodes.file
          testNodes.acme
        ]
      )
      [
        true
        true
        true
      ]
    )
    (check "the VM tests' mail nodes pass every assertion"
      (map failing [
        testNodes.declared
        testNodes.file
        testNodes.acme
      ])
      [
        [ ]
        [ ]
        [ ]
      ]
    )
    (check "the VM tests' mail nodes: accounts, TLS source"
      [
        (tomlOf testNodes.declared).accounts_file
        (tomlOf testNodes.file).accounts_file
        (tomlOf testNodes.acme).tls.source
        (tomlOf testNodes.acme).acme.directory
        (tomlOf testNodes.declared).postfix.reject_unknown_sender_domain
      ]
      [
        "/var/lib/postmaster/accounts.toml"
        "/etc/postmaster/accounts.toml"
        "acme"
        "https://acme.test/dir"
        false
      ]
    )
    (check "everything the module defines evaluates"
      (map everything [
        full
        adminFile
        dovecot23
        acme
      ])
      [
        true
        true
        true
        true
      ]
    )
    (check "no assertion fails (declared accounts)" (failing full) [ ])
    (check "no assertion fails (accounts file)" (failing adminFile) [ ])
    (check "postfix: virtual maps are postmaster's hash maps"
      [ fullMain.virtual_alias_maps fullMain.virtual_mailbox_maps fullMain.smtpd_sender_login_maps ]
      [
        [ "hash:/var/lib/postmaster/generated/postfix/virtual_alias" ]
        [ "hash:/var/lib/postmaster/generated/postfix/virtual_mailbox" ]
        [ "hash:/var/lib/postmaster/generated/postfix/sender_login" ]
      ]
    )
    (check "postfix: TLS from postmaster's pair, 1.2 or newer"
      [
        fullMain.smtpd_tls_chain_files
        fullMain.smtpd_tls_protocols
        fullMain.smtpd_tls_auth_only
      ]
      [
        [ "/var/lib/postmaster/tls/pair.pem" ]
        ">=TLSv1.2"
        true
      ]
    )
    (check "postfix: no open relay, recipients checked"
      [
        fullMain.smtpd_relay_restrictions
        fullMain.smtpd_recipient_restrictions
        fullMain.mydestination
      ]
      [
        [
          "permit_mynetworks"
          "reject_unauth_destination"
        ]
        [
          "reject_non_fqdn_recipient"
          "reject_unlisted_recipient"
        ]
        [ "localhost" ]
      ]
    )
    (check "postfix: submission requires TLS and checks the sender"
      [
        full.services.postfix.submissionOptions.smtpd_tls_security_level
        full.services.postfix.submissionOptions.smtpd_sender_restrictions
        fullMain.mua_sender_restrictions
        full.services.postfix.enableSubmissions
      ]
      [
        "encrypt"
        "$mua_sender_restrictions"
        [
          "reject_non_fqdn_sender"
          "reject_sender_login_mismatch"
        ]
        true
      ]
    )
    (check "postfix: unknown sender domains refused by default" fullMain.smtpd_sender_restrictions [
      "reject_non_fqdn_sender"
      "reject_unknown_sender_domain"
    ])
    (check "dovecot 2.4: passwd-file passdb and userdb"
      [
        fullDovecot."passdb passwd-file".passwd_file_path
        fullDovecot."userdb passwd-file".passwd_file_path
      ]
      [
        "/var/lib/postmaster/generated/dovecot/users"
        "/var/lib/postmaster/generated/dovecot/users"
      ]
    )
    (check "dovecot 2.4: login name without domain, TLS required"
      [
        fullDovecot.auth_username_format
        fullDovecot.ssl
        fullDovecot.ssl_min_protocol
        fullDovecot.auth_allow_cleartext
        fullDovecot.ssl_server_cert_file
      ]
      [ "%{user | username | lower}" "required" "TLSv1.2" false "/var/lib/postmaster/tls/pair.pem" ]
    )
    (check "dovecot: LMTP and auth sockets in postfix's queue directory"
      [
        fullDovecot."service lmtp"."unix_listener /var/lib/postfix/queue/private/dovecot-lmtp".user
        fullDovecot."service auth"."unix_listener /var/lib/postfix/queue/private/auth".mode
      ]
      [ "postfix" "0660" ]
    )
    (check "dovecot: special-use mailboxes" fullDovecot."namespace inbox"."mailbox Junk" {
      auto = "subscribe";
      special_use = "\\Junk";
    })
    (check "dovecot: implicit TLS on 993 and 995"
      [
        fullDovecot."service imap-login"."inet_listener imaps"
        fullDovecot."service pop3-login"."inet_listener pop3s"
      ]
      [
        {
          port = 993;
          ssl = true;
        }
        {
          port = 995;
          ssl = true;
        }
      ]
    )
    (check "dovecot: the passwd-file group" full.services.dovecot2.group "dovecot")
    (check "dovecot 2.3: passwd-file and ssl_cert"
      [
        dovecot23.services.dovecot2.settings.passdb.args
        dovecot23.services.dovecot2.settings.ssl_cert
        dovecot23.services.dovecot2.settings.auth_username_format
        (tomlOf dovecot23).dovecot.version
      ]
      [ "/var/lib/postmaster/generated/dovecot/users" "</var/lib/postmaster/tls/pair.pem" "%Ln" "2.3" ]
    )
    (check "daemon: notify-reload, user postmaster, no supplementary group"
      [
        fullUnit.serviceConfig.Type
        fullUnit.serviceConfig.User
        (fullUnit.serviceConfig ? SupplementaryGroups)
        fullUnit.serviceConfig.ProtectSystem
        fullUnit.serviceConfig.CapabilityBoundingSet
      ]
      [
        "notify-reload"
        "postmaster"
        false
        "strict"
        [ "" ]
      ]
    )
    (check "daemon: after postfix and dovecot; they start after the setup unit, not after the daemon"
      [
        (builtins.all (u: builtins.elem u fullUnit.after) [
          "postfix.service"
          "dovecot.service"
        ])
        full.systemd.services.postfix.after
        full.systemd.services.dovecot.after
      ]
      [
        true
        [ "postmaster-setup.service" ]
        [
          "postmaster-setup.service"
          "postfix.service"
        ]
      ]
    )
    (check "setup unit: after the declared accounts are written"
      (builtins.elem "postmaster-accounts.service" full.systemd.services.postmaster-setup.after)
      true
    )
    (check "passwd-file directory: setgid, dovecot's group"
      (builtins.elem "d /var/lib/postmaster/generated/dovecot 2750 postmaster dovecot - -" full.systemd.tmpfiles.rules)
      true
    )
    (check "D-Bus policy: units/'s, for the configured admin group"
      (
        let
          policy =
            builtins.head
              (eval {
                imports = [ base ];
                services.postmaster.adminGroup = "mailadmins";
              }).services.dbus.packages;
        in
        [
          (lib.hasInfix ''<policy group="mailadmins">'' policy.text)
          (lib.hasInfix ''<policy group="postmaster-admin">'' policy.text)
          (lib.hasInfix ''<allow own="io.postmaster.Supervisor1"/>'' policy.text)
        ]
      )
      [
        true
        false
        true
      ]
    )
    (check "declared accounts: credentials from the hash files"
      full.systemd.services.postmaster-accounts.serviceConfig.LoadCredential
      [
        "hash-anna:/run/secrets/anna.hash"
        "hash-thomas:/run/secrets/thomas.hash"
      ]
    )
    (check "declared accounts: the writer fills the rendered template"
      (
        let
          script = full.systemd.services.postmaster-accounts.serviceConfig.ExecStart.text;
        in
        [
          (lib.hasInfix "template='/nix/store/00000000000000000000000000000000-postmaster-accounts.toml'" script)
          (lib.hasInfix "output='/var/lib/postmaster/accounts.toml'" script)
          (lib.hasInfix "for name in 'anna' 'thomas'; do" script)
        ]
      )
      [
        true
        true
        true
      ]
    )
    (check "declared accounts: the daemon wants the writer, does not require it"
      [
        (builtins.elem "postmaster-accounts.service" fullUnit.wants)
        (fullUnit ? requires)
      ]
      [ true false ]
    )
    (check "config.toml (declared accounts)" (tomlOf full) {
      host_name = "mail.example.org";
      domains = [
        "example.org"
        "example.net"
      ];
      accounts_file = "/var/lib/postmaster/accounts.toml";
      state_dir = "/var/lib/postmaster";
      generated_dir = "/var/lib/postmaster/generated";
      tls = {
        source = "files";
        cert = "/etc/ssl/mail/fullchain.pem";
        key = "/etc/ssl/mail/key.pem";
      };
      systemd = {
        postfix_unit = "postfix.service";
        dovecot_unit = "dovecot.service";
      };
      postfix = {
        map_type = "hash";
        message_size_limit = 67108864;
        reject_unknown_sender_domain = true;
      };
      dovecot = {
        version = "2.4";
        mail_root = "/var/vmail";
        vmail_user = "vmail";
        vmail_uid = 5000;
        vmail_gid = 5000;
      };
    })
    (check "accounts file: the default path, created when missing"
      [
        (tomlOf adminFile).accounts_file
        (builtins.any (lib.hasPrefix "f /etc/postmaster/accounts.toml 0640 root postmaster") adminFile.systemd.tmpfiles.rules)
        (adminFile.systemd.services ? postmaster-accounts)
      ]
      [ "/etc/postmaster/accounts.toml" true false ]
    )
    (check "acme http-01: socket on 80, firewall opens 80"
      [
        acme.systemd.sockets.postmaster-acme.listenStreams
        acme.systemd.sockets.postmaster-acme.socketConfig.FileDescriptorName
        (acme.systemd.services.postmaster.serviceConfig ? Sockets)
        acme.systemd.services.postmaster.restartTriggers
        (builtins.elem 80 acme.networking.firewall.allowedTCPPorts)
        (tomlOf acme).acme.challenge
      ]
      [
        [ "80" ]
        "acme-http"
        false
        [ "postmaster-acme.socket" ]
        true
        "http-01"
      ]
    )
    (check "polkit: only postfix and dovecot, only for postmaster" (
      lib.hasInfix ''var USER = "postmaster";'' acme.security.polkit.extraConfig
      && lib.hasInfix ''var UNITS = ["postfix.service", "dovecot.service"];'' acme.security.polkit.extraConfig
    ) true)
    (refuses "refuses: no domains" (eval {
      imports = [ base ];
      services.postmaster.domains = lib.mkForce [ ];
    }) "services.postmaster.domains is empty")
    (refuses "refuses: no host name" (eval {
      imports = [ base ];
      services.postmaster.hostName = lib.mkForce null;
    }) "services.postmaster.hostName must be set")
    (refuses "refuses: accounts file and declared accounts" (eval {
      imports = [
        base
        declaredAccounts
      ];
      services.postmaster.accountsFile = lib.mkForce "/etc/postmaster/accounts.toml";
    }) "Exactly one of them")
    (refuses "refuses: a hash file in the store" (eval {
      imports = [
        base
        declaredAccounts
      ];
      services.postmaster.accounts.mailboxes.thomas.passwordHashFile =
        lib.mkForce "${builtins.storeDir}/abc-thomas.hash";
    }) "Offending mailboxes: thomas")
    (refuses "refuses: files without a key" (eval {
      imports = [ base ];
      services.postmaster.tls.key = lib.mkForce null;
    }) ''tls.source = "files" needs both'')
    (refuses "refuses: http-01 beside nginx" (eval {
      imports = [ acmeModule ];
      services.nginx.enable = true;
    }) "services.nginx is enabled")
    (refuses "refuses: derived keys in extraConfig" (eval {
      imports = [ base ];
      services.postmaster.extraConfig.dovecot.mail_root = "/srv/mail";
    }) "dovecot: set services.postmaster.mailRoot")
  ];
in
{
  # deepSeq: every check runs (the length of a list alone would not force them).
  # To try a configuration: (import ./module-eval.nix { inherit lib; }).eval { … }
  inherit eval;
  # The evaluated configurations, to look at: -A configs.full.services.dovecot2.settings --json
  configs = {
    inherit
      full
      adminFile
      dovecot23
      acme
      ;
  };
  summary = builtins.deepSeq results "nix/module.nix: ${toString (builtins.length results)} checks passed (stubbed nixpkgs modules)";
}
