# services.postmaster evaluated with lib.evalModules against nixpkgs' mail
# modules, both generations of the dovecot one, without the rest of nixpkgs: a lib
# (minilib, the project's own builtins-only one in nix/tests/eval/minilib, or
# nixpkgs' lib, e.g. the nix-community/nixpkgs.lib repository), the rest of NixOS
# stubbed loosely (nix/tests/eval/nixos.nix) and a fake pkgs (eval/pkgs.nix).
#
# By default the mail modules are the project's stubs (nix/tests/eval/stubs),
# which mirror the option declarations of nixpkgs' postfix.nix, mail.nix and both
# dovecot.nix generations (each file names the nixpkgs version it mirrors) and
# declare nothing more, so an option the real modules lack fails here too:
#
#   nix-instantiate --eval --strict nix/tests/module-eval.nix \
#     --arg lib 'import ./nix/tests/eval/minilib' -A summary
#   (or --arg lib 'import /path/to/nixpkgs.lib/lib', with Nix 2.18 or newer)
#
# With --argstr mailModulesDir DIR they are nixpkgs' real modules instead (with
# either lib; minilib has the few more functions they take from `with lib;`):
# every subdirectory of DIR is one generation, holding
# nixos/modules/services/mail/{postfix,mail,dovecot,rspamd}.nix as read from
# nixpkgs, and optionally nixos/modules/services/{networking/unbound,
# databases/redis}.nix (the stubs stand in for a missing one). With nixpkgs = a nixpkgs tree, they
# are that tree's (`nix flake check` does this with the flake's nixpkgs).
#
# Every generation evaluates: the VM tests' mail nodes, the NixOS examples of
# README.md exactly as written, and configurations of the checks below (their
# values, their assertions), and the configurations the module system must refuse
# (an undeclared option, a wrong type). Throws on the first mismatch.
# tests/nix-checks.sh runs it with minilib always, and with nixpkgs' lib when
# POSTMASTER_NIXPKGS_LIB (and POSTMASTER_NIXPKGS_MODULES) are set, comparing the
# two libs' `snapshot`s.
{
  lib,
  mailModulesDir ? null,
  # A nixpkgs tree (`nix flake check` passes pkgs.path): its own mail modules.
  nixpkgs ? null,
}:

let
  pkgs = import ./eval/pkgs.nix { inherit lib; };

  # unbound.nix and redis.nix (Bayes' store) are nixpkgs' own when DIR has them
  # (nixos/modules/services/{networking/unbound,databases/redis}.nix), the
  # project's stubs otherwise (and with a nixpkgs tree: eval/stubs/unbound.nix
  # says why).
  mailFiles =
    dir: others:
    map (f: dir + "/nixos/modules/services/mail/${f}.nix") [
      "postfix"
      "mail"
      "dovecot"
      "rspamd"
    ]
    ++ others;
  realOrStub =
    dir: path: stub:
    if builtins.pathExists (dir + "/nixos/modules/services/${path}") then
      dir + "/nixos/modules/services/${path}"
    else
      stub;
  generations =
    if nixpkgs != null then
      {
        "nixpkgs-${lib.trivial.release}" = mailFiles nixpkgs [
          ./eval/stubs/unbound.nix
          ./eval/stubs/redis.nix
        ];
      }
    else if mailModulesDir == null then
      {
        dovecot-500271 = [
          ./eval/stubs/postfix.nix
          ./eval/stubs/mail.nix
          ./eval/stubs/dovecot-500271.nix
          ./eval/stubs/rspamd.nix
          ./eval/stubs/unbound.nix
          ./eval/stubs/redis.nix
        ];
        dovecot-unstable = [
          ./eval/stubs/postfix.nix
          ./eval/stubs/mail.nix
          ./eval/stubs/dovecot-unstable.nix
          ./eval/stubs/rspamd.nix
          ./eval/stubs/unbound.nix
          ./eval/stubs/redis.nix
        ];
      }
    else
      lib.mapAttrs (
        name: _:
        let
          dir = /. + "${mailModulesDir}/${name}";
        in
        mailFiles dir [
          (realOrStub dir "networking/unbound.nix" ./eval/stubs/unbound.nix)
          (realOrStub dir "databases/redis.nix" ./eval/stubs/redis.nix)
        ]
      ) (lib.filterAttrs (_: type: type == "directory") (builtins.readDir mailModulesDir));
  source =
    if nixpkgs == null && mailModulesDir == null then
      "stubs of nixpkgs' mail modules"
    else
      "nixpkgs' mail modules";

  # The NixOS examples of README.md, exactly as written: the ```nix blocks of its
  # NixOS section. A block that enables services.postmaster is a configuration of
  # its own; one that does not adds to the first (an account, say). A block with
  # flake inputs is the flake example: not a NixOS module.
  readme = builtins.readFile ../../README.md;
  nixosSection = builtins.head (
    lib.splitString "\n## " (builtins.elemAt (lib.splitString "\n## NixOS\n" readme) 1)
  );
  fenced = lib.splitString "```" nixosSection;
  nixBlocks = map (lib.removePrefix "nix\n") (
    builtins.filter (lib.hasPrefix "nix\n") (
      lib.imap0 (i: s: if lib.mod i 2 == 1 then s else "") fenced
    )
  );
  flakeBlocks = builtins.filter (lib.hasInfix "inputs") nixBlocks;
  moduleBlocks = builtins.filter (b: !lib.hasInfix "inputs" b) nixBlocks;
  asModule =
    i: text:
    import (
      builtins.toFile "readme-example-${toString i}.nix" (
        if lib.hasPrefix "{" text then text else "{\n${text}}\n"
      )
    );
  standalone = builtins.filter (b: lib.hasInfix "enable = true;" b) moduleBlocks;
  readmeExamples =
    lib.imap1 (i: text: {
      name = "README example ${toString i}";
      modules = [ (asModule i text) ];
    }) standalone
    ++ lib.imap1 (i: text: {
      name = "README addition ${toString i}, to example 1";
      modules = [
        (asModule 100 (builtins.head standalone))
        (asModule (100 + i) text)
      ];
    }) (builtins.filter (b: !lib.hasInfix "enable = true;" b) moduleBlocks);

  # The VM tests' mail nodes (nix/tests/common.nix and the tests' own modules).
  testCommon = import ./common.nix {
    inherit pkgs;
    module = ../module.nix;
  };
  testNodes = {
    declared = testCommon.mailHost { accountsMode = "declared"; };
    file = testCommon.mailHost { accountsMode = "file"; };
    acme =
      (import ./acme.nix {
        common = testCommon;
        inherit pkgs;
      }).nodes.mail;
    dovecot23 =
      (import ./dovecot23.nix {
        common = testCommon;
        inherit pkgs;
      }).nodes.mail;
    logins =
      (import ./logins.nix {
        common = testCommon;
        inherit pkgs;
      }).nodes.mail;
  };

  failing = config: map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);

  # The user dovecot's auth process runs as (it reads the passwd-file, mode 0640,
  # group dovecot) and whether it can: root, or a user whose primary group is
  # dovecot. The internal user's is default_internal_group in the newer module and
  # services.dovecot2.group in the older one.
  authReader =
    c:
    let
      settings = c.services.dovecot2.settings;
      user = settings."service auth".user or settings.default_internal_user;
    in
    {
      inherit user;
      canRead = user == "root" || (c.users.users.${user}.group or null) == "dovecot";
    };

  # Forces every value the module defines (and nixpkgs' mail modules with it), so
  # an evaluation error anywhere in them fails this file. The VM tests' nodes
  # keep their users unforced: root's ssh key comes from nixpkgs' tests.
  forced =
    c:
    builtins.deepSeq [
      c.assertions
      c.warnings
      c.environment
      c.networking
      c.security
      c.systemd
      c.users.groups
      c.users.users.postmaster
      c.services.dbus
      # Not services.postfix or services.dovecot2 whole: their renamed and removed
      # options throw when read.
      # master.cf's services leave options undefined: their lines are what counts.
      c.services.postfix.settings.main
      (lib.mapAttrs (_: service: service.rawEntry) c.services.postfix.settings.master)
      c.services.postfix.submissionOptions
      c.services.postfix.submissionsOptions
      c.services.dovecot2.settings
      c.services.dovecot2.package
      # Not services.rspamd whole either (renamed and removed options).
      c.services.rspamd.enable
      (lib.mapAttrs (_: w: [
        w.type
        w.bindSockets
        w.extraConfig
      ]) c.services.rspamd.workers)
      (lib.mapAttrs (_: f: f.text) c.services.rspamd.locals)
      (authReader c)
    ] true;

  checksFor =
    generation: mailModules:
    let
      evalFull =
        config:
        lib.evalModules {
          modules = [
            ./eval/nixos.nix
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
          ]
          ++ mailModules;
        };
      eval = config: (evalFull config).config;

      # A passed check: its name and what it saw (tests/nix-checks.sh compares
      # these values under minilib and under nixpkgs' lib).
      check =
        name: actual: expected:
        if actual == expected then
          {
            name = "${generation}: ${name}";
            inherit actual;
          }
        else
          throw "nix/tests/module-eval.nix (${generation}, ${source}): ${name}: expected ${builtins.toJSON expected}, got ${builtins.toJSON actual}";

      # Passes when exactly one assertion fails and its message contains `text`.
      refuses =
        name: config: text:
        let
          messages = failing config;
        in
        if builtins.length messages == 1 && lib.hasInfix text (builtins.head messages) then
          {
            name = "${generation}: ${name}";
            actual = messages;
          }
        else
          throw "nix/tests/module-eval.nix (${generation}, ${source}): ${name}: expected one failing assertion mentioning `${text}`, got ${builtins.toJSON messages}";

      # Evaluates, passes every assertion, and dovecot's auth process can read the
      # passwd-file.
      sound =
        name: c:
        check name
          [
            (forced c)
            (failing c)
            (authReader c).canRead
          ]
          [
            true
            [ ]
            true
          ];

      nodes = lib.mapAttrs (_: eval) testNodes;

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

      tomlOf = config: config.environment.etc."postmaster/config.toml".source.value;
      # What services.rspamd puts into /etc/rspamd, by name: local.d/…, rspamd.conf.
      rspamdEtc =
        config:
        builtins.listToAttrs (
          map (e: lib.nameValuePair e.name e.path) config.environment.etc.rspamd.source.entries
        );
      # rspamd's local.d/dkim_signing.conf as `postmaster render` writes it, with
      # the NixOS module's paths (tests/nix-checks.sh compares nix/lib/dkim.nix
      # with postmaster render itself).
      dkimSigningConf = (import ../lib/dkim.nix).signingConf {
        configFile = "/etc/postmaster/config.toml";
        hostName = "mail.example.org";
        generatedDir = "/var/lib/postmaster/generated";
      };
      milter = "unix:/run/rspamd/rspamd-milter.sock";
      noSection = lib.flip builtins.removeAttrs [ "_section" ];
      # Every TCP port dovecot listens on (its inet listeners whose port is not
      # 0), sorted; nixpkgs' modules may wrap each section with `_section`.
      dovecotPorts =
        c:
        let
          settings = c.services.dovecot2.settings;
          sectionsOf =
            prefix: attrs:
            map (n: attrs.${n}) (builtins.filter (lib.hasPrefix prefix) (builtins.attrNames attrs));
          listeners = builtins.concatMap (sectionsOf "inet_listener ") (sectionsOf "service " settings);
        in
        builtins.sort builtins.lessThan (
          builtins.filter (p: p != 0) (map (l: l.port or (throw "an inet listener without a port")) listeners)
        );
      # What postmaster-tls.socket holds: the mail-access ports, which the
      # firewall opens (openFirewall) and dovecot must leave alone.
      frontPorts = [
        110
        143
        993
        995
        4190
      ];
      # The polkit rule's list of units, as the module writes it.
      polkitUnitsLine =
        c:
        builtins.head (
          builtins.head (
            builtins.filter (l: l != null) (
              map (builtins.match " *(var UNITS = .*)") (lib.splitString "\n" c.security.polkit.extraConfig)
            )
          )
        );

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

      noDkim = eval {
        imports = [ base ];
        services.postmaster.dkim.enable = false;
      };
      noDkimMain = noDkim.services.postfix.settings.main;
      # Neither signing nor checks: no rspamd at all.
      noRspamd = eval {
        imports = [ base ];
        services.postmaster.dkim.enable = false;
        services.postmaster.inbound.enable = false;
      };
      noInbound = eval {
        imports = [ base ];
        services.postmaster.inbound.enable = false;
      };
      # The checks of port 25 as `postmaster render` writes them, with the NixOS
      # paths (tests/nix-checks.sh compares nix/lib/inbound.nix with postmaster
      # render itself).
      inboundLocals = (import ../lib/inbound.nix).locals {
        configFile = "/etc/postmaster/config.toml";
        domains = [
          "example.org"
          "example.net"
        ];
        rejectScore = 15;
        addHeaderScore = 6;
      };
      rspamdUnit = full.systemd.services.rspamd;
      inboundLearning = import ../lib/inbound.nix;
      # Password guessing: dovecot's auth policy block as `postmaster render`
      # writes it (tests/nix-checks.sh compares nix/lib/logins.nix with postmaster
      # render itself), with [logins]' defaults unless given.
      loginsLib = import ../lib/logins.nix;
      authPolicy =
        version: limits:
        loginsLib.dovecotPolicy (
          {
            inherit version;
            blockAfterFailures = 10;
            failureWindowSeconds = 600;
            blockSeconds = 900;
            policyAddress = "127.0.0.1:10041";
          }
          // limits
        );
      # Who dovecot's auth runs as, so who asks postmaster's policy listener:
      # the older module (the one that declares services.dovecot2.group) makes
      # the auth service root; the newer leaves dovecot's default, the internal
      # user, dovecot2.
      olderDovecot = (evalFull base).options.services.dovecot2 ? group;
      dovecotAuthUser = if olderDovecot then "root" else "dovecot2";
      includedTexts = c: map (f: f.text) c.services.dovecot2.includeFiles;
      proxy = full.services.rspamd.workers.rspamd_proxy;

      # Before NixOS 26.05, nixpkgs' dovecot module picks Dovecot 2.3.
      dovecot23 = eval {
        imports = [ base ];
        system.stateVersion = "25.11";
      };

      acmeModule = {
        imports = [ base ];
        services.postmaster.tls.source = lib.mkForce "acme";
        services.postmaster.acme.contact = [ "mailto:postmaster@example.org" ];
        services.postmaster.openFirewall = true;
      };
      acme = eval acmeModule;

      # A Nix path literal as the ACME trust root: copied into the store, so the
      # system's closure has it (toString would have kept the path in the source).
      trustRootFile = eval {
        imports = [ acmeModule ];
        services.postmaster.acme.trustRoot = ./eval/pkgs.nix;
      };

      readmeConfigs = map (e: {
        inherit (e) name;
        config = eval { imports = e.modules; };
      }) readmeExamples;

      # Configurations the module system must refuse, as nixpkgs' lib does: an
      # option nobody declared, a value of the wrong type, two values that
      # disagree. `expected` begins the error (tests/nix-checks.sh checks it for
      # each lib; here only that evaluation fails).
      rejects =
        let
          undeclared = path: "The option `${path}' does not exist.";
          wrongType = path: description: "A definition for option `${path}' is not of type `${description}'.";
          reject = extra: expected: {
            inherit expected;
            value = forced (eval {
              imports = [
                base
                extra
              ];
            });
          };
        in
        {
          undeclared = reject { services.postmaster.mailDir = "/srv/mail"; } (
            undeclared "services.postmaster.mailDir"
          );
          undeclaredInSubmodule = reject {
            imports = [ declaredAccounts ];
            services.postmaster.accounts.mailboxes.anna.password = "secret";
          } (undeclared "services.postmaster.accounts.mailboxes.anna.password");
          undeclaredInStub = reject { services.postfix.settings.master.smtp.bogus = 1; } (
            undeclared "services.postfix.settings.master.smtp.bogus"
          );
          wrongTypeList = reject { services.postmaster.domains = lib.mkForce "example.org"; } (
            wrongType "services.postmaster.domains" "list of string"
          );
          wrongTypePositive = reject { services.postmaster.dkim.keepPublishedDays = 0; } (
            wrongType "services.postmaster.dkim.keepPublishedDays" "positive integer, meaning >0"
          );
          wrongTypeScore = reject { services.postmaster.inbound.rejectScore = 0; } (
            wrongType "services.postmaster.inbound.rejectScore" "positive integer or floating point number, meaning >0"
          );
          wrongTypeScoreString = reject { services.postmaster.inbound.addHeaderScore = "6"; } (
            wrongType "services.postmaster.inbound.addHeaderScore" "positive integer or floating point number, meaning >0"
          );
          wrongTypePolicyAddress = reject { services.postmaster.logins.policyAddress = "0.0.0.0:10041"; } (
            wrongType "services.postmaster.logins.policyAddress" "string matching the pattern ${loginsLib.policyAddressPattern}"
          );
          wrongTypeEnum = reject { services.postmaster.tls.source = lib.mkForce "letsencrypt"; } (
            wrongType "services.postmaster.tls.source" "one of \"acme\", \"files\""
          );
          wrongTypeInStub = reject { services.postfix.settings.main.message_size_limit = "big"; } (
            wrongType "services.postfix.settings.main.message_size_limit" "null or signed integer"
          );
          wrongTypeDovecotSetting = reject { services.dovecot2.settings.auth_verbose = 1.5; } (
            wrongType "services.dovecot2.settings.auth_verbose" "Dovecot config value"
          );
          wrongTypeInSubmodule = reject {
            imports = [ declaredAccounts ];
            services.postmaster.accounts.mailboxes.anna.passwordHashFile = lib.mkForce 5;
          } (wrongType "services.postmaster.accounts.mailboxes.anna.passwordHashFile" "string");
          conflicting = reject {
            services.postmaster.hostName = "mx.example.org";
          } "The option `services.postmaster.hostName' has conflicting definition values";
        }
        # The newer dovecot module has no `group` (this issue's bug).
        // lib.optionalAttrs (!((evalFull base).options.services.dovecot2 ? group)) {
          undeclaredDovecotGroup = reject { services.dovecot2.group = "dovecot"; } (
            undeclared "services.dovecot2.group"
          );
        };

      # What a configuration makes, as plain values for JSON: fake packages by
      # name and the text or value they carry.
      plain =
        v:
        if builtins.isFunction v then
          "<function>"
        else if builtins.isPath v then
          toString v
        else if lib.isDerivation v then
          {
            inherit (v) name outPath;
          }
          // lib.optionalAttrs (v ? text) { inherit (v) text; }
          // lib.optionalAttrs (v ? value) { value = plain v.value; }
          // lib.optionalAttrs (v ? entries) { entries = plain v.entries; }
        else if builtins.isAttrs v then
          builtins.mapAttrs (_: plain) v
        else if builtins.isList v then
          map plain v
        else
          v;
      rendered =
        c:
        plain {
          failingAssertions = failing c;
          inherit (c)
            warnings
            environment
            networking
            security
            systemd
            ;
          postfix = {
            inherit (c.services.postfix) enable submissionOptions submissionsOptions;
            inherit (c.services.postfix.settings) main;
            master = builtins.mapAttrs (_: service: {
              inherit (service)
                args
                command
                name
                rawEntry
                type
                ;
            }) c.services.postfix.settings.master;
          };
          dovecot2 = {
            inherit (c.services.dovecot2) enable package settings;
          };
          rspamd = {
            inherit (c.services.rspamd) enable;
            workers = builtins.mapAttrs (_: w: {
              inherit (w)
                count
                enable
                extraConfig
                includes
                name
                type
                ;
              bindSockets = map (b: b.rawEntry) w.bindSockets;
            }) c.services.rspamd.workers;
            locals = builtins.mapAttrs (_: f: f.text) c.services.rspamd.locals;
          };
          # root's ssh key in the VM tests' nodes comes from nixpkgs' tests.
          users = {
            inherit (c.users) groups;
            users = builtins.removeAttrs c.users.users [ "root" ];
          };
          inherit (c.services) dbus;
        };
      configurations =
        lib.mapAttrs' (name: lib.nameValuePair "VM test node ${name}") nodes
        // builtins.listToAttrs (map (e: lib.nameValuePair e.name e.config) readmeConfigs)
        // {
          "declared accounts" = full;
          "accounts file" = adminFile;
          "DKIM off" = noDkim;
          "Dovecot 2.3 (stateVersion 25.11)" = dovecot23;
          "ACME http-01" = acme;
          "ACME trust root as a Nix path" = trustRootFile;
        };
      checks = [
        (sound "the VM test's mail node (declared accounts)" nodes.declared)
        (sound "the VM test's mail node (accounts file)" nodes.file)
        (sound "the VM test's mail node (ACME from pebble)" nodes.acme)
        (sound "the VM test's mail node (Dovecot 2.3)" nodes.dovecot23)
        (sound "the VM test's mail node (password guessing)" nodes.logins)
        (check "the VM tests' mail nodes: accounts, TLS source, Dovecot version"
          [
            (tomlOf nodes.declared).accounts_file
            (tomlOf nodes.file).accounts_file
            (tomlOf nodes.acme).tls.source
            (tomlOf nodes.acme).acme.directory
            (tomlOf nodes.acme).acme.trust_root
            (tomlOf nodes.declared).postfix.reject_unknown_sender_domain
            (tomlOf nodes.declared).dovecot.version
            (tomlOf nodes.dovecot23).dovecot.version
            nodes.dovecot23.services.dovecot2.settings.ssl_cert
          ]
          [
            "/var/lib/postmaster/accounts.toml"
            "/etc/postmaster/accounts.toml"
            "acme"
            "https://acme.test/dir"
            "/nix/store/00000000000000000000000000000000-ca.cert.pem"
            false
            "2.4"
            "2.3"
            "</var/lib/postmaster/tls/pair.pem"
          ]
        )
        (check "README.md has NixOS examples, and a flake example pinned to nixos-26.05"
          [
            (builtins.length standalone >= 2)
            (builtins.length flakeBlocks)
            (lib.hasInfix ''nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";'' (builtins.head flakeBlocks))
          ]
          [
            true
            1
            true
          ]
        )
      ]
      ++ map (
        e:
        sound e.name (eval {
          imports = e.modules;
        })
      ) readmeExamples
      ++ [
        (sound "declared accounts" full)
        (sound "accounts file" adminFile)
        (sound "Dovecot 2.3 (stateVersion 25.11)" dovecot23)
        (sound "ACME http-01" acme)
        (check
          "dovecot's auth process: root with the older dovecot module, its internal user in group dovecot with the newer"
          (authReader full)
          {
            user = if full.services.dovecot2.settings ? "service auth".user then "root" else "dovecot2";
            canRead = true;
          }
        )
        (check "ACME trust root given as a Nix path: in the store, so in the system's closure"
          (
            let
              root = (tomlOf trustRootFile).acme.trust_root;
            in
            [
              (lib.hasPrefix builtins.storeDir root)
              (lib.hasSuffix "-pkgs.nix" root)
              (builtins.hasContext root)
            ]
          )
          [
            true
            true
            true
          ]
        )
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
        (check
          "LMTP: postfix delivers to systemd's socket (postfix's, 0600), relayed as postfix to dovecot's, which stays"
          [
            fullMain.virtual_transport
            full.systemd.sockets.postmaster-lmtp.listenStreams
            full.systemd.sockets.postmaster-lmtp.wantedBy
            full.systemd.sockets.postmaster-lmtp.socketConfig.SocketUser
            full.systemd.sockets.postmaster-lmtp.socketConfig.SocketMode
            full.systemd.services.postmaster-lmtp.requires
            full.systemd.services.postmaster-lmtp.stopIfChanged
            full.systemd.sockets.postmaster-lmtp.socketConfig.RemoveOnStop
            (builtins.match ".*/bin/postmaster lmtp-relay --backend (.*)" full.systemd.services.postmaster-lmtp.serviceConfig.ExecStart)
            full.systemd.services.postmaster-lmtp.serviceConfig.User
            full.systemd.services.postmaster-lmtp.serviceConfig.PrivateNetwork
            full.systemd.services.postmaster-lmtp.serviceConfig.RestrictAddressFamilies
            full.systemd.services.postmaster-lmtp.serviceConfig.BindReadOnlyPaths
            (full.systemd.services.postmaster-lmtp.serviceConfig ? RemoveIPC)
            (fullDovecot."service lmtp" ? "unix_listener /var/lib/postfix/queue/private/dovecot-lmtp")
          ]
          [
            "lmtp:unix:private/postmaster-lmtp"
            [ "/var/lib/postfix/queue/private/postmaster-lmtp" ]
            [ "sockets.target" ]
            "postfix"
            "0600"
            [ "postmaster-lmtp.socket" ]
            false
            true
            [ "/var/lib/postfix/queue/private/dovecot-lmtp" ]
            "postfix"
            true
            [ "AF_UNIX" ]
            [ "/var/lib/postfix/queue/private" ]
            false
            true
          ]
        )
        (check "dovecot 2.4 and 2.3: a reload lets LMTP deliveries in flight finish"
          [
            fullDovecot.shutdown_clients
            dovecot23.services.dovecot2.settings.shutdown_clients
          ]
          [ false false ]
        )
        (check "dovecot: special-use mailboxes" (noSection fullDovecot."namespace inbox"."mailbox Junk") {
          auto = "subscribe";
          special_use = "\\Junk";
        })
        (check
          "dovecot 2.4 and 2.3: IMAP, POP3 and ManageSieve only from the TLS front, on loopback, PROXY headers believed from there alone"
          (map
            (c: [
              (noSection c.services.dovecot2.settings."service imap-login"."inet_listener imap")
              (noSection (c.services.dovecot2.settings."service imap-login"."inet_listener imaps" or { }))
              (noSection c.services.dovecot2.settings."service pop3-login"."inet_listener pop3")
              (noSection (c.services.dovecot2.settings."service pop3-login"."inet_listener pop3s" or { }))
              (noSection c.services.dovecot2.settings."service managesieve-login"."inet_listener sieve")
              c.services.dovecot2.settings.listen
              c.services.dovecot2.settings.haproxy_trusted_networks
              # A connection without the front's SSL flag is not secured: no
              # password in clear.
              c.services.dovecot2.settings.ssl
              (dovecotPorts c)
            ])
            [
              full
              dovecot23
            ]
          )
          (
            builtins.genList (_: [
              {
                port = 10143;
                haproxy = true;
              }
              # dovecot's built-in implicit-TLS listeners, switched off.
              { port = 0; }
              {
                port = 10110;
                haproxy = true;
              }
              { port = 0; }
              {
                port = 14190;
                haproxy = true;
              }
              "127.0.0.1"
              "127.0.0.1/32"
              "required"
              [
                10110
                10143
                14190
              ]
            ]) 2
          )
        )
      ]
      # nixpkgs' own modules render dovecot.conf (the stubs leave configFile
      # null): the listeners as dovecot reads them, 2.4 and 2.3.
      ++ lib.optional (full.services.dovecot2.configFile != null) (
        check
          "dovecot.conf as nixpkgs renders it: loopback, PROXY headers, the front's backends, no imaps or pop3s"
          (map
            (
              c:
              let
                lines = lib.splitString "\n" c.services.dovecot2.configFile.text;
                text = c.services.dovecot2.configFile.text;
              in
              [
                (builtins.elem "listen = 127.0.0.1" lines)
                (builtins.elem "haproxy_trusted_networks = 127.0.0.1/32" lines)
                (lib.hasInfix "service imap-login {\n  inet_listener imap {\n    haproxy = yes\n    port = 10143\n  }\n  inet_listener imaps {\n    port = 0\n  }\n}\n" text)
                (lib.hasInfix "service pop3-login {\n  inet_listener pop3 {\n    haproxy = yes\n    port = 10110\n  }\n  inet_listener pop3s {\n    port = 0\n  }\n}\n" text)
                (lib.hasInfix "service managesieve-login {\n  inet_listener sieve {\n    haproxy = yes\n    port = 14190\n  }\n}\n" text)
                (builtins.elem "ssl = required" lines)
              ]
            )
            [
              full
              dovecot23
            ]
          )
          (builtins.genList (_: builtins.genList (_: true) 6) 2)
      )
      ++ [
        (check "dovecot: no listener on a port of the TLS front, in any configuration" (lib.mapAttrs (
          _: c: builtins.filter (p: builtins.elem p frontPorts) (dovecotPorts c)
        ) configurations) (lib.mapAttrs (_: _: [ ]) configurations))
        (check
          "TLS front: postmaster-tls.socket holds 993, 995, 143, 110 and 4190 for postmaster-tls.service"
          [
            full.systemd.sockets.postmaster-tls.listenStreams
            full.systemd.sockets.postmaster-tls.wantedBy
            full.systemd.sockets.postmaster-tls.socketConfig
            # The firewall opens what the socket holds (and SMTP's).
            (builtins.filter (p: builtins.elem p frontPorts) acme.networking.firewall.allowedTCPPorts)
          ]
          [
            [
              "993"
              "995"
              "143"
              "110"
              "4190"
            ]
            [ "sockets.target" ]
            {
              Backlog = 1024;
              NoDelay = true;
              KeepAlive = true;
              KeepAliveTimeSec = 300;
              KeepAliveIntervalSec = 30;
              KeepAliveProbes = 4;
              Service = "postmaster-tls.service";
            }
            [
              993
              995
              143
              110
              4190
            ]
          ]
        )
        (check
          "TLS front: postmaster tls-front with the installed pair, reloaded on SIGHUP, after its socket and dovecot"
          (
            let
              unit = full.systemd.services.postmaster-tls;
            in
            [
              (builtins.match "/nix/store/[^ ]*/bin/postmaster tls-front --pair (.*)" unit.serviceConfig.ExecStart)
              unit.serviceConfig.Type
              unit.serviceConfig.Restart
              unit.serviceConfig.RestartSec
              unit.requires
              unit.after
              # The unit it waits for is nixpkgs' dovecot unit.
              (full.systemd.services ? dovecot)
              # Running from boot, not only from the first client.
              unit.wantedBy
              unit.serviceConfig.LimitNOFILE
              unit.stopIfChanged
            ]
          )
          [
            [ "/var/lib/postmaster/tls/pair.pem" ]
            "notify-reload"
            "on-failure"
            "1s"
            [ "postmaster-tls.socket" ]
            [
              "postmaster-tls.socket"
              "dovecot.service"
            ]
            true
            [ "multi-user.target" ]
            8192
            false
          ]
        )
        (check
          "TLS front: its own system user, the network but no capability, of /var only the pair's directory, read-only"
          (
            let
              sc = full.systemd.services.postmaster-tls.serviceConfig;
            in
            [
              sc.User
              sc.Group
              full.users.users.postmaster-tls
              full.users.groups.postmaster-tls
              sc.RestrictAddressFamilies
              (sc ? PrivateNetwork)
              (sc ? IPAddressDeny)
              sc.ProtectSystem
              sc.TemporaryFileSystem
              sc.BindReadOnlyPaths
              (sc ? ReadWritePaths)
              (sc ? StateDirectory)
              sc.CapabilityBoundingSet
              sc.AmbientCapabilities
              sc.NoNewPrivileges
              sc.PrivateUsers
              sc.RemoveIPC
              sc.SystemCallFilter
              # The relay's sandbox otherwise.
              (
                removeAttrs sc [
                  "User"
                  "Group"
                  "BindReadOnlyPaths"
                  "RestrictAddressFamilies"
                  "RemoveIPC"
                  "ExecStart"
                  "Type"
                  "Restart"
                  "RestartSec"
                  "LimitNOFILE"
                ] == removeAttrs full.systemd.services.postmaster-lmtp.serviceConfig [
                  "User"
                  "Group"
                  "BindReadOnlyPaths"
                  "RestrictAddressFamilies"
                  "PrivateNetwork"
                  "IPAddressDeny"
                  "ExecStart"
                  "TimeoutStopSec"
                  "Restart"
                  "RestartSec"
                ]
              )
            ]
          )
          [
            "postmaster-tls"
            "postmaster-tls"
            {
              isSystemUser = true;
              group = "postmaster-tls";
              description = "postmaster TLS front (IMAP, POP3, ManageSieve)";
            }
            { }
            [
              "AF_UNIX"
              "AF_INET"
              "AF_INET6"
            ]
            false
            false
            "strict"
            "/var:ro"
            [ "/var/lib/postmaster/tls" ]
            false
            false
            [ "" ]
            [ "" ]
            true
            true
            true
            [
              "@system-service"
              "~@privileged @resources"
            ]
            true
          ]
        )
        (check
          "TLS front: the pair's directory is setgid postmaster-tls, so the pair (0640) is the front's to read"
          [
            (builtins.elem "d /var/lib/postmaster/tls 2750 postmaster postmaster-tls - -" full.systemd.tmpfiles.rules)
            # A pair from before the front gets its group and mode.
            (builtins.elem "z /var/lib/postmaster/tls/pair.pem 0640 postmaster postmaster-tls - -" full.systemd.tmpfiles.rules)
            (builtins.filter (lib.hasInfix "/var/lib/postmaster/tls") full.systemd.tmpfiles.rules)
            # postmaster writes it without being in the group.
            (full.users.users.postmaster ? extraGroups)
            (full.systemd.services.postmaster.serviceConfig ? SupplementaryGroups)
          ]
          [
            true
            true
            [
              "d /var/lib/postmaster/tls 2750 postmaster postmaster-tls - -"
              "z /var/lib/postmaster/tls/pair.pem 0640 postmaster postmaster-tls - -"
            ]
            false
            false
          ]
        )
        (check "dovecot 2.3: passwd-file and ssl_cert"
          [
            dovecot23.services.dovecot2.settings.passdb.args
            dovecot23.services.dovecot2.settings.ssl_cert
            dovecot23.services.dovecot2.settings.auth_username_format
            (tomlOf dovecot23).dovecot.version
          ]
          [ "/var/lib/postmaster/generated/dovecot/users" "</var/lib/postmaster/tls/pair.pem" "%Ln" "2.3" ]
        )
        (check "dovecot 2.4: Junk filing before the user's own Sieve script, at delivery"
          [
            fullDovecot.protocols.sieve
            fullDovecot."protocol lmtp".mail_plugins.sieve
            (noSection fullDovecot."sieve_script spam-to-junk")
            (noSection fullDovecot."sieve_script personal")
            # Not through nixpkgs' sieve.scripts: one generation would render 2.3's
            # sieve_before, which Dovecot 2.4 refuses.
            full.services.dovecot2.sieve.scripts
          ]
          [
            true
            true
            {
              type = "before";
              path = "${dovecot23.services.dovecot2.sieve.scripts.before}";
            }
            {
              driver = "file";
              path = "~/sieve";
              active_path = "~/.dovecot.sieve";
            }
            { }
          ]
        )
        (check "dovecot 2.3: Junk filing through sieve_before, then the user's script"
          [
            dovecot23.services.dovecot2.settings.protocols
            dovecot23.services.dovecot2.settings."protocol lmtp".mail_plugins
            dovecot23.services.dovecot2.settings.plugin.sieve
            (builtins.attrNames dovecot23.services.dovecot2.sieve.scripts)
            # Who gets the compiled script; the module's own vmail user, not one
            # nixpkgs would create.
            dovecot23.services.dovecot2.settings.mail_uid
            dovecot23.services.dovecot2.createMailUser
          ]
          [
            "imap pop3 lmtp sieve"
            "$mail_plugins sieve"
            "file:~/sieve;active=~/.dovecot.sieve"
            [ "before" ]
            "vmail"
            false
          ]
        )
        # The script itself is Debian's, comments aside: a change to one without the
        # other fails here.
        (check "Sieve: the spam-to-junk script is the one postmaster renders"
          dovecot23.services.dovecot2.sieve.scripts.before.text
          (
            let
              lines = builtins.filter builtins.isString (
                builtins.split "\n" (
                  builtins.readFile ../../supervisor/src/render/templates/sieve-spam-to-junk.sieve
                )
              );
            in
            lib.concatStringsSep "\n" (builtins.filter (l: builtins.substring 0 1 l != "#") lines)
          )
        )
        (check
          "dovecot: ManageSieve (4190 through the front), its programs and sieve plugins from Pigeonhole"
          [
            (noSection fullDovecot."service managesieve-login"."inet_listener sieve")
            (builtins.elem "dovecot-pigeonhole" (map (p: p.name or null) full.environment.systemPackages))
            (builtins.elem 4190 acme.networking.firewall.allowedTCPPorts)
          ]
          [
            {
              port = 14190;
              haproxy = true;
            }
            true
            true
          ]
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
            (builtins.elem "postmaster-setup.service" full.systemd.services.postfix.after)
            (builtins.elem "postmaster.service" full.systemd.services.postfix.after)
            (builtins.elem "postmaster-setup.service" full.systemd.services.dovecot.after)
            (builtins.elem "postfix.service" full.systemd.services.dovecot.after)
            (builtins.elem "postmaster.service" full.systemd.services.dovecot.after)
          ]
          [
            true
            true
            false
            true
            true
            false
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
            rspamd_unit = "rspamd.service";
            resolver_unit = "unbound.service";
            valkey_unit = "redis-rspamd.service";
            admin_group = "postmaster-admin";
          };
          dkim = {
            enabled = true;
            milter = "unix:/run/rspamd/rspamd-milter.sock";
            keep_published_days = 7;
            dns_check_seconds = 300;
            ed25519 = false;
          };
          dns = {
            spf = "v=spf1 mx -all";
            dmarc = "v=DMARC1; p=quarantine";
            addresses = [ ];
            ttl = 3600;
          };
          inbound = {
            enabled = true;
            reject_score = 15;
            add_header_score = 6;
            learning = true;
            resolver = "local";
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
          logins = {
            block_after_failures = 10;
            failure_window_seconds = 600;
            block_seconds = 900;
            policy_address = "127.0.0.1:10041";
            policy_clients = [ dovecotAuthUser ];
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
        (check
          "polkit: only postfix, dovecot, rspamd and the TLS front, only for postmaster; without DKIM, no rspamd; the rest is units/'s"
          [
            (lib.hasInfix ''var USER = "postmaster";'' acme.security.polkit.extraConfig)
            (polkitUnitsLine acme)
            (polkitUnitsLine noDkim)
            (lib.hasInfix ''"rspamd.service"'' noDkim.security.polkit.extraConfig)
            # Only the UNITS line is the module's.
            (
              builtins.replaceStrings [ (polkitUnitsLine noDkim) ] [ "" ] noDkim.security.polkit.extraConfig
              == builtins.concatStringsSep "\n" (
                map (l: if builtins.match " *var UNITS = .*" l != null then "    " else l) (
                  lib.splitString "\n" (builtins.readFile ../../units/polkit-postmaster.rules)
                )
              )
            )
          ]
          [
            true
            ''var UNITS = ["postfix.service", "dovecot.service", "rspamd.service", "postmaster-tls.service"];''
            ''var UNITS = ["postfix.service", "dovecot.service", "postmaster-tls.service"];''
            false
            true
          ]
        )
        (check
          "DKIM: main.cf as on Debian: submission and local mail through rspamd's milter, 451 while it is away, port 25 without"
          [
            fullMain.submission_milters
            fullMain.non_smtpd_milters
            fullMain.internal_mail_filter_classes
            fullMain.milter_default_action
            fullMain.milter_protocol
            fullMain.milter_mail_macros
            (fullMain.smtpd_milters or null)
            (tomlOf full).dkim.milter
          ]
          [
            milter
            "$submission_milters"
            "bounce"
            "tempfail"
            6
            "i {mail_addr} {client_addr} {client_name} {auth_authen}"
            null
            milter
          ]
        )
        (check "DKIM: master.cf: submission and submissions with smtpd_milters=$submission_milters"
          [
            full.services.postfix.submissionOptions.smtpd_milters
            full.services.postfix.submissionsOptions.smtpd_milters
            full.services.postfix.submissionOptions.milter_macro_daemon_name
            # nixpkgs' real module writes them into master.cf (the stub does not).
            (builtins.all
              (
                svc:
                let
                  master = full.services.postfix.settings.master;
                in
                !(master ? ${svc}) || builtins.elem "smtpd_milters=$submission_milters" master.${svc}.args
              )
              [
                "submission"
                "submissions"
              ]
            )
          ]
          [
            "$submission_milters"
            "$submission_milters"
            "ORIGINATING"
            true
          ]
        )
        (check
          "DKIM: rspamd's proxy worker is the milter, on a socket of postfix's group, scanning by itself"
          [
            full.services.rspamd.enable
            full.services.rspamd.postfix.enable
            (builtins.attrNames full.services.rspamd.workers)
            proxy.type
            (map (s: s.rawEntry) proxy.bindSockets)
            (lib.hasInfix "self_scan = yes;" proxy.extraConfig)
            (lib.hasInfix "milter = yes;" proxy.extraConfig)
            (lib.hasInfix
              ''bind_socket = "/run/rspamd/rspamd-milter.sock mode=0660 owner=rspamd group=postfix";''
              (rspamdEtc full)."rspamd.conf".text
            )
            (lib.hasInfix "self_scan = yes;" (rspamdEtc full)."override.d/worker-proxy.inc".text)
          ]
          [
            true
            false
            [
              "controller"
              "rspamd_proxy"
            ]
            "rspamd_proxy"
            [ "/run/rspamd/rspamd-milter.sock mode=0660 owner=rspamd group=postfix" ]
            true
            true
            true
            true
          ]
        )
        (check
          "DKIM: rspamd's local.d/dkim_signing.conf is what postmaster render writes, with the NixOS paths"
          [
            full.services.rspamd.locals."dkim_signing.conf".text
            (rspamdEtc full)."local.d/dkim_signing.conf".text
            (lib.hasInfix ''.include(try=true) "/var/lib/postmaster/generated/rspamd/dkim_domains.conf"'' dkimSigningConf)
            (lib.hasInfix "sign_inbound = false;" dkimSigningConf)
            (lib.hasInfix "try_fallback = false;" dkimSigningConf)
          ]
          [
            dkimSigningConf
            dkimSigningConf
            true
            true
            true
          ]
        )
        (check "DKIM: rspamd starts after the setup unit, reloads on SIGHUP, may give its socket to postfix"
          [
            (builtins.elem "postmaster-setup.service" rspamdUnit.after)
            (builtins.elem "postmaster-setup.service" rspamdUnit.wants)
            (lib.hasInfix "kill -HUP $MAINPID" rspamdUnit.serviceConfig.ExecReload)
            rspamdUnit.serviceConfig.SupplementaryGroups
            rspamdUnit.serviceConfig.PrivateUsers
            rspamdUnit.serviceConfig.User
            full.users.users.rspamd.group
          ]
          [
            true
            true
            true
            [
              "postfix"
              "redis-rspamd"
            ]
            false
            "rspamd"
            "rspamd"
          ]
        )
        (check "DKIM: key directory setgid, rspamd's group; rspamd's table readable"
          [
            (builtins.elem "d /var/lib/postmaster/dkim 2750 postmaster rspamd - -" full.systemd.tmpfiles.rules)
            (builtins.elem "d /var/lib/postmaster/generated/rspamd 0755 postmaster postmaster - -" full.systemd.tmpfiles.rules)
            # rspamd passes through to both (o+x).
            (builtins.elem "d /var/lib/postmaster 0751 postmaster postmaster - -" full.systemd.tmpfiles.rules)
            (builtins.elem "d /var/lib/postmaster/generated 0751 postmaster postmaster - -" full.systemd.tmpfiles.rules)
          ]
          [
            true
            true
            true
            true
          ]
        )
        (check
          "DKIM off: no milter on submission, no key directory, [dkim] enabled = false; rspamd still checks port 25"
          [
            noDkim.services.rspamd.enable
            noDkimMain.submission_milters
            noDkimMain.non_smtpd_milters
            noDkimMain.internal_mail_filter_classes
            noDkim.services.postfix.submissionOptions.smtpd_milters
            (tomlOf noDkim).dkim
            (builtins.any (lib.hasInfix "/dkim ") noDkim.systemd.tmpfiles.rules)
            noDkimMain.inbound_milters
            (lib.hasInfix "enabled = false;" (rspamdEtc noDkim)."local.d/dkim_signing.conf".text)
          ]
          [
            true
            ""
            "$submission_milters"
            ""
            "$submission_milters"
            { enabled = false; }
            false
            milter
            true
          ]
        )
        (check "DKIM and inbound checks off: no rspamd, no milter anywhere"
          [
            noRspamd.services.rspamd.enable
            (noRspamd.systemd.services ? rspamd)
            noRspamd.services.postfix.settings.main.submission_milters
            noRspamd.services.postfix.settings.main.inbound_milters
            (tomlOf noRspamd).inbound.enabled
          ]
          [
            false
            false
            ""
            ""
            false
          ]
        )
        (check "inbound: port 25's smtpd through rspamd's milter, [inbound] in config.toml"
          [
            fullMain.inbound_milters
            full.services.postfix.settings.master.smtp_inet.args
            full.services.postfix.submissionOptions.smtpd_milters
            (tomlOf full).inbound
          ]
          [
            milter
            [
              "-o"
              "smtpd_milters=$inbound_milters"
            ]
            "$submission_milters"
            {
              enabled = true;
              reject_score = 15;
              add_header_score = 6;
              learning = true;
              resolver = "local";
            }
          ]
        )
        (check "inbound: rspamd asks unbound on loopback alone, which resolves and validates itself"
          (
            let
              server = full.services.unbound.settings.server;
            in
            [
              (rspamdEtc full)."local.d/options.inc".text
              full.services.unbound.enable
              full.services.unbound.resolveLocalQueries
              server.interface
              server.access-control
              (server ? forward-zone || full.services.unbound.settings ? forward-zone)
              server.auto-trust-anchor-file
              server.prefetch
              (builtins.elem "unbound.service" full.systemd.services.rspamd.after)
              (builtins.elem "unbound.service" full.systemd.services.rspamd.wants)
              (tomlOf full).systemd.resolver_unit
            ]
          )
          [
            ((import ../lib/inbound.nix).resolverLocals {
              configFile = "/etc/postmaster/config.toml";
              resolver = "local";
            })."options.inc"
            true
            false
            [ "127.0.0.1" ]
            [ "127.0.0.0/8 allow" ]
            false
            "/var/lib/unbound/root.key"
            true
            true
            true
            "unbound.service"
          ]
        )
        (check "inbound: the system's resolver, or no checks: no unbound"
          (
            let
              system = eval {
                imports = [ base ];
                services.postmaster.inbound.resolver = "system";
              };
            in
            [
              system.services.unbound.enable
              (lib.hasInfix "nameserver" (rspamdEtc system)."local.d/options.inc".text)
              (tomlOf system).inbound.resolver
              noInbound.services.unbound.enable
            ]
          )
          [
            false
            false
            "system"
            false
          ]
        )
        (check "inbound: rspamd's local.d files are what postmaster render writes, with the NixOS paths"
          (
            let
              etc = rspamdEtc full;
            in
            [
              (builtins.mapAttrs (name: _: etc."local.d/${name}".text) inboundLocals)
              inboundLocals."postmaster_hosted_domains.map"
              (lib.hasInfix "reject = 15;\nadd_header = 6;\n" inboundLocals."actions.conf")
              (lib.hasInfix ''map = "$LOCAL_CONFDIR/local.d/postmaster_hosted_domains.map";''
                inboundLocals."multimap.conf"
              )
            ]
          )
          [
            inboundLocals
            "# The hosted domains, generated by `postmaster render` from /etc/postmaster/config.toml.\nexample.org\nexample.net\n"
            true
            true
          ]
        )
        (check "inbound: only loopback is local to rspamd (override.d/options.inc), checks on or off"
          (map (c: (rspamdEtc c)."override.d/options.inc".text) [
            full
            noInbound
          ])
          (
            let
              text =
                ((import ../lib/inbound.nix).overrides { configFile = "/etc/postmaster/config.toml"; })
                ."options.inc";
            in
            assert lib.hasInfix "local_addrs = [127.0.0.0/8, ::1];" text;
            [
              text
              text
            ]
          )
        )
        # Not on nixpkgs' default localhost:11334, where any local user could teach
        # rspamd or change its settings; checks on or off (signing alone too).
        (check "rspamd: its controller only on a socket, in a directory for the mail user's group"
          [
            (map (s: s.rawEntry) full.services.rspamd.workers.controller.bindSockets)
            (map (s: s.rawEntry) noInbound.services.rspamd.workers.controller.bindSockets)
            (lib.hasInfix
              ''bind_socket = "/run/rspamd-learn/controller.sock mode=0660 owner=rspamd group=vmail";''
              (rspamdEtc full)."rspamd.conf".text
            )
            (lib.hasInfix "11334" (rspamdEtc full)."rspamd.conf".text)
            (rspamdEtc full)."override.d/worker-controller.inc".text
            (builtins.elem "d /run/rspamd-learn 2750 rspamd vmail - -" full.systemd.tmpfiles.rules)
            full.systemd.services.rspamd.serviceConfig.ReadWritePaths
          ]
          [
            [ "/run/rspamd-learn/controller.sock mode=0660 owner=rspamd group=vmail" ]
            [ "/run/rspamd-learn/controller.sock mode=0660 owner=rspamd group=vmail" ]
            true
            false
            ((import ../lib/inbound.nix).overrides { configFile = "/etc/postmaster/config.toml"; })
            ."worker-controller.inc"
            true
            [ "/run/rspamd-learn" ]
          ]
        )
        # Learning from Junk, as on Debian: rspamd's Bayes in a Redis server of its
        # own, reached on its unix socket only; IMAPSieve's block, scripts and
        # programs from postmaster's own templates (tests/nix-checks.sh compares
        # nix/lib/inbound.nix with postmaster render).
        (check "learning: Bayes in redis-rspamd, on its socket alone, which rspamd's group may reach"
          (
            let
              redis = full.services.redis.servers.rspamd;
            in
            [
              (tomlOf full).inbound.learning
              (tomlOf full).systemd.valkey_unit
              redis.enable
              redis.settings.port
              redis.settings.unixsocket
              redis.settings.unixsocketperm
              full.systemd.services.redis-rspamd.serviceConfig.RuntimeDirectoryMode
              (rspamdEtc full)."local.d/classifier-bayes.conf".text
              (builtins.elem redis.group rspamdUnit.serviceConfig.SupplementaryGroups)
              (builtins.elem "redis-rspamd.service" rspamdUnit.wants)
              (builtins.elem "redis-rspamd.service" rspamdUnit.after)
            ]
          )
          [
            true
            "redis-rspamd.service"
            true
            0
            "/run/redis-rspamd/redis.sock"
            "660"
            "0750"
            (inboundLearning.bayesLocals {
              configFile = "/etc/postmaster/config.toml";
              learning = true;
              servers = "/run/redis-rspamd/redis.sock";
            })."classifier-bayes.conf"
            true
            true
            true
          ]
        )
        (check
          "learning: the scripts and the programs they pipe to, from postmaster's templates, with nixpkgs' rspamc"
          (
            let
              etc = full.environment.etc;
            in
            [
              etc."dovecot/sieve/learn-spam.sieve".text
              etc."dovecot/sieve/learn-ham.sieve".text
              etc."dovecot/sieve-pipe/rspamd-learn-spam".text
              etc."dovecot/sieve-pipe/rspamd-learn-spam".mode
              etc."dovecot/sieve-pipe/rspamd-learn-ham".mode
              (lib.hasSuffix
                "\nexec /nix/store/00000000000000000000000000000000-rspamd-3.12.1/bin/rspamc --connect /run/rspamd-learn/controller.sock --timeout 10 learn_ham\n"
                etc."dovecot/sieve-pipe/rspamd-learn-ham".text
              )
            ]
          )
          (
            let
              files = inboundLearning.learningFiles {
                configFile = "/etc/postmaster/config.toml";
                rspamc = "/nix/store/00000000000000000000000000000000-rspamd-3.12.1/bin/rspamc";
              };
            in
            [
              files."dovecot/sieve/learn-spam.sieve"
              files."dovecot/sieve/learn-ham.sieve"
              files."dovecot/sieve-pipe/rspamd-learn-spam"
              "0755"
              "0755"
              true
            ]
          )
        )
        (check
          "learning: dovecot 2.4 and 2.3 include IMAPSieve's block as postmaster renders it, imap_sieve for IMAP"
          [
            (builtins.head (includedTexts full))
            (noSection fullDovecot."protocol imap".mail_plugins)
            (builtins.head (includedTexts dovecot23))
            dovecot23.services.dovecot2.settings."protocol imap".mail_plugins
          ]
          [
            (inboundLearning.dovecotLearning "2.4")
            {
              imap_quota = true;
              imap_sieve = true;
            }
            (inboundLearning.dovecotLearning "2.3")
            "$mail_plugins imap_quota imap_sieve"
          ]
        )
        (check "learning off: no Redis, no IMAPSieve, Bayes without a store, config.toml says so"
          (
            let
              c = eval {
                imports = [ base ];
                services.postmaster.inbound.learning = false;
              };
            in
            [
              (tomlOf c).inbound.learning
              (c.services.redis.servers ? rspamd && c.services.redis.servers.rspamd.enable)
              # Only the auth policy's block is left.
              (includedTexts c)
              (noSection c.services.dovecot2.settings."protocol imap".mail_plugins)
              (c.environment.etc ? "dovecot/sieve/learn-spam.sieve")
              (rspamdEtc c)."local.d/classifier-bayes.conf".text
              (builtins.elem "redis-rspamd.service" c.systemd.services.rspamd.after)
              # Still closed: no TCP controller with learning off either.
              (map (s: s.rawEntry) c.services.rspamd.workers.controller.bindSockets)
              (tomlOf noInbound).inbound.learning
              (noInbound.services.redis.servers ? rspamd && noInbound.services.redis.servers.rspamd.enable)
            ]
          )
          [
            false
            false
            [ (authPolicy "2.4" { }) ]
            { imap_quota = true; }
            false
            (inboundLearning.bayesLocals {
              configFile = "/etc/postmaster/config.toml";
              learning = false;
              servers = "/run/redis-rspamd/redis.sock";
            })."classifier-bayes.conf"
            false
            [ "/run/rspamd-learn/controller.sock mode=0660 owner=rspamd group=vmail" ]
            false
            false
          ]
        )
        (check
          "logins: dovecot 2.4 and 2.3 ask postmaster's policy listener before each login, as postmaster renders it"
          [
            (includedTexts full)
            (includedTexts dovecot23)
            (lib.hasInfix "\nauth_policy_server_url = http://127.0.0.1:10041/\n" (authPolicy "2.4" { }))
            (lib.hasInfix "\nauth_policy_request_attributes = remote=%{rip} protocol=%s\n" (
              authPolicy "2.3" { }
            ))
            # Only the auth policy asks: no setting of the same name beside it.
            (builtins.filter (lib.hasPrefix "auth_policy") (builtins.attrNames fullDovecot))
          ]
          [
            [
              (inboundLearning.dovecotLearning "2.4")
              (authPolicy "2.4" { })
            ]
            [
              (inboundLearning.dovecotLearning "2.3")
              (authPolicy "2.3" { })
            ]
            true
            true
            [ ]
          ]
        )
        (check
          "logins: policy_clients is the user dovecot's auth runs as (root with the older module, dovecot2 with the newer), for 2.4 and 2.3"
          [
            (tomlOf full).logins.policy_clients
            (authReader full).user
            (tomlOf dovecot23).logins.policy_clients
            (authReader dovecot23).user
            (tomlOf nodes.logins).logins.policy_clients
          ]
          [
            [ dovecotAuthUser ]
            dovecotAuthUser
            [ dovecotAuthUser ]
            dovecotAuthUser
            [ dovecotAuthUser ]
          ]
        )
        (check "logins: an auth service given another user names that user"
          (tomlOf (eval {
            imports = [ base ];
            services.dovecot2.settings."service auth".user = lib.mkForce "dovecot-auth";
          })).logins.policy_clients
          [ "dovecot-auth" ]
        )
        (check "logins: the limits and the listener's address reach config.toml and dovecot (2.4 and 2.3)"
          (
            let
              limits = {
                services.postmaster.logins = {
                  blockAfterFailures = 3;
                  failureWindowSeconds = 60;
                  blockSeconds = 120;
                  policyAddress = "[::1]:9000";
                };
              };
              c = eval {
                imports = [
                  base
                  limits
                ];
              };
              c23 = eval {
                imports = [
                  base
                  limits
                ];
                system.stateVersion = "25.11";
              };
            in
            [
              (tomlOf c).logins
              (lib.last (includedTexts c))
              (lib.last (includedTexts c23))
              (lib.hasPrefix "# 3 failed logins from one address within 60 s block it for 120 s\n" (
                lib.last (includedTexts c)
              ))
              (lib.hasInfix "\nauth_policy_server_url = http://[::1]:9000/\n" (lib.last (includedTexts c23)))
            ]
          )
          (
            let
              limits = {
                blockAfterFailures = 3;
                failureWindowSeconds = 60;
                blockSeconds = 120;
                policyAddress = "[::1]:9000";
              };
            in
            [
              {
                block_after_failures = 3;
                failure_window_seconds = 60;
                block_seconds = 120;
                policy_address = "[::1]:9000";
                policy_clients = [ dovecotAuthUser ];
              }
              (authPolicy "2.4" limits)
              (authPolicy "2.3" limits)
              true
              true
            ]
          )
        )
        (check "logins off (blockAfterFailures = 0): dovecot asks nobody, config.toml says so"
          (
            let
              c = eval {
                imports = [ base ];
                services.postmaster.logins.blockAfterFailures = 0;
              };
              c23 = eval {
                imports = [ base ];
                services.postmaster.logins.blockAfterFailures = 0;
                system.stateVersion = "25.11";
              };
            in
            [
              (includedTexts c)
              (includedTexts c23)
              (tomlOf c).logins.block_after_failures
              (builtins.any (lib.hasInfix "auth_policy") (includedTexts c ++ includedTexts c23))
              (failing c)
            ]
          )
          [
            [ (inboundLearning.dovecotLearning "2.4") ]
            [ (inboundLearning.dovecotLearning "2.3") ]
            0
            false
            [ ]
          ]
        )
        (refuses "refuses: [logins] in extraConfig (policy_clients is dovecot's auth user)" (eval {
          imports = [ base ];
          services.postmaster.extraConfig.logins.policy_clients = [ "nobody" ];
        }) "logins: set services.postmaster.logins instead")
        (refuses "refuses: learning without the checks of port 25" (eval {
          imports = [ base ];
          services.postmaster.inbound = {
            enable = false;
            learning = true;
          };
        }) "services.postmaster.inbound.learning needs services.postmaster.inbound.enable")
        (check "inbound off: port 25 unchecked, rspamd still signs, no inbound files"
          [
            noInbound.services.postfix.settings.main.inbound_milters
            noInbound.services.postfix.settings.main.submission_milters
            noInbound.services.rspamd.enable
            ((rspamdEtc noInbound) ? "local.d/actions.conf")
            ((rspamdEtc noInbound) ? "local.d/force_actions.conf")
            (tomlOf noInbound).inbound.enabled
          ]
          [
            ""
            milter
            true
            false
            false
            false
          ]
        )
        (check "inbound: scores into config.toml and actions.conf as rspamd reads them"
          (
            let
              c = eval {
                imports = [ base ];
                services.postmaster.inbound = {
                  rejectScore = 20;
                  addHeaderScore = 5.5;
                };
              };
            in
            [
              (tomlOf c).inbound
              (lib.hasInfix "reject = 20;\nadd_header = 5.5;\n" (rspamdEtc c)."local.d/actions.conf".text)
            ]
          )
          [
            {
              enabled = true;
              reject_score = 20;
              add_header_score = 5.5;
              learning = true;
              resolver = "local";
            }
            true
          ]
        )
        (check "DKIM and DNS options into config.toml"
          (
            let
              c = tomlOf (eval {
                imports = [ base ];
                services.postmaster.dkim = {
                  rotateAfterDays = 180;
                  keepPublishedDays = 10;
                  dnsCheckSeconds = 60;
                };
                services.postmaster.dns = {
                  spf = "v=spf1 mx a -all";
                  dmarc = "v=DMARC1; p=none";
                  addresses = [
                    "192.0.2.25"
                    "2001:db8::25"
                  ];
                  ttl = 300;
                };
              });
            in
            [
              c.dkim
              c.dns
            ]
          )
          [
            {
              enabled = true;
              inherit milter;
              rotate_after_days = 180;
              keep_published_days = 10;
              dns_check_seconds = 60;
              ed25519 = false;
            }
            {
              spf = "v=spf1 mx a -all";
              dmarc = "v=DMARC1; p=none";
              addresses = [
                "192.0.2.25"
                "2001:db8::25"
              ];
              ttl = 300;
            }
          ]
        )
        (check "DNS options: an SPF record without v=spf1, or a host name as address, is refused"
          (map
            (
              dns:
              (builtins.tryEval (
                builtins.deepSeq
                  (tomlOf (eval {
                    imports = [ base ];
                    services.postmaster.dns = dns;
                  })).dns
                  true
              )).success
            )
            [
              { spf = "mx -all"; }
              { addresses = [ "mail.example.org" ]; }
              { dmarc = "p=none"; }
            ]
          )
          [
            false
            false
            false
          ]
        )
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
        (refuses "refuses: the DKIM milter in extraConfig" (eval {
          imports = [ base ];
          services.postmaster.extraConfig.dkim.milter = "inet:127.0.0.1:11332";
        }) "dkim: set services.postmaster.dkim")
        (refuses "refuses: services.rspamd.postfix.enable (a milter on port 25 too)" (eval {
          imports = [ base ];
          services.rspamd.postfix.enable = true;
        }) "services.rspamd.postfix.enable puts rspamd's milter on every smtpd")
        (refuses "refuses: services.rspamd.postfix.enable with the inbound checks alone" (eval {
          imports = [ base ];
          services.postmaster.dkim.enable = false;
          services.rspamd.postfix.enable = true;
        }) "services.rspamd.postfix.enable puts rspamd's milter on every smtpd")
        (refuses "refuses: a spam header from a score that is already refused" (eval {
          imports = [ base ];
          services.postmaster.inbound = {
            rejectScore = 8;
            addHeaderScore = 8;
          };
        }) "services.postmaster.inbound.addHeaderScore (8) must be below")
        (refuses "refuses: the inbound checks in extraConfig" (eval {
          imports = [ base ];
          services.postmaster.extraConfig.inbound.reject_score = 30;
        }) "inbound: set services.postmaster.inbound")
      ]
      ++ lib.mapAttrsToList (
        name: r: check "rejects: ${name}" (builtins.tryEval r.value).success false
      ) rejects;
    in
    {
      snapshot = {
        configurations = builtins.mapAttrs (_: rendered) configurations;
        checks = builtins.listToAttrs (map (r: lib.nameValuePair r.name r.actual) checks);
      };
      inherit rejects checks;
    };

  perGeneration = builtins.mapAttrs checksFor generations;
  results = lib.concatLists (lib.mapAttrsToList (_: g: g.checks) perGeneration);
in
{
  # deepSeq: every check runs (the length of a list alone would not force them).
  summary = builtins.deepSeq results "nix/module.nix: ${toString (builtins.length results)} checks passed against ${source} (${lib.concatStringsSep ", " (builtins.attrNames generations)})";
  # The names of the checks: -A names --json
  names = map (r: r.name) results;
  # Per generation, what each configuration makes and what each check saw:
  # --strict --json -A snapshot, compared by tests/nix-checks.sh under minilib
  # and under nixpkgs' lib.
  snapshot = builtins.mapAttrs (_: g: g.snapshot) perGeneration;
  # Per generation, evaluations that must fail, each with the start of its
  # error: -A rejects.<generation>.<name>.value
  rejects = builtins.mapAttrs (_: g: g.rejects) perGeneration;
  # The same as a list for tests/nix-checks.sh, which evaluates each attr to fail
  # with an error that contains `expected`: --json -A expectedErrors
  expectedErrors = lib.concatLists (
    lib.mapAttrsToList (
      generation: g:
      lib.mapAttrsToList (name: r: {
        attr = "rejects.${generation}.${name}.value";
        inherit (r) expected;
      }) g.rejects
    ) perGeneration
  );
}
