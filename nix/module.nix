# services.postmaster: the seed's mail host on NixOS.
#
# postfix and dovecot are configured through nixpkgs' own modules
# (services.postfix, services.dovecot2) with the settings postmaster renders for
# Debian (supervisor/src/render/templates); this module never writes their
# configuration files itself. What postmaster owns at run time (the postfix maps,
# the dovecot passwd-file, the installed certificate pair) lives in
# /var/lib/postmaster and is kept up to date by the postmaster daemon, which
# reloads postfix, dovecot and rspamd through systemd when they need it. TLS on
# the mail-access ports (IMAP, POP3, ManageSieve) is postmaster's own TLS front
# (postmaster-tls.socket and .service), which hands each connection to dovecot on
# loopback: a new certificate reloads postfix and the front, never dovecot.
#
# nixpkgs options this module relies on (NixOS 26.05 and nixos-unstable of June
# 2026; nix/tests/eval/stubs mirrors their declarations):
#   services.postfix: enable, package, user, group, enableSmtp, enableSubmission(s),
#     submission(s)Options, settings.main (freeform; queue_directory is set by
#     nixpkgs' module with mkDefault)
#   services.dovecot2: enable, package, enablePAM, createMailUser, includeFiles
#     (IMAPSieve's and the auth policy's blocks, as `postmaster render` writes
#     them), settings (freeform, "type name" section keys; "service auth".user,
#     which the older module sets to root, else default_internal_user: who asks
#     the policy listener), sieve.scripts (Dovecot 2.3 only; it
#     needs settings.mail_uid and mail_gid), and group where declared (26.05) or
#     settings.default_internal_group where not (newer); the package's
#     passthru.dovecot_pigeonhole; its unit is dovecot.service
#   services.rspamd (with DKIM signing): enable, user, group, workers.<name>.
#     {bindSockets, extraConfig} (its own `rspamd_proxy` worker, milter on a
#     socket of postfix's group; the controller on a socket), locals.<file>.text,
#     overrides.<file>.text; its unit is rspamd.service (ProtectSystem=strict, so
#     the controller's directory is added to ReadWritePaths), and its
#     PrivateUsers (set from services.rspamd.postfix.enable, which this module
#     does not use) is overridden
#   services.unbound (inbound checks with resolver = "local"): enable,
#     resolveLocalQueries, settings.server (freeform); its unit is unbound.service
#   security.acme.certs.<name>: directory, group
#   security.polkit.extraConfig, services.dbus.packages, systemd.{services,sockets}
{
  config,
  lib,
  options,
  pkgs,
  ...
}:

let
  inherit (lib)
    concatStringsSep
    literalExpression
    mapAttrs
    mkDefault
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    optional
    optionalAttrs
    optionals
    types
    ;

  cfg = config.services.postmaster;
  accountsLib = import ./lib/accounts.nix;
  dkimLib = import ./lib/dkim.nix;
  inboundLib = import ./lib/inbound.nix;
  loginsLib = import ./lib/logins.nix;
  settingsFormat = pkgs.formats.toml { };

  stateDir = "/var/lib/postmaster";
  generatedDir = "${stateDir}/generated";
  # The validated pair (key, then chain) the daemon installs for postfix, dovecot
  # and the TLS front.
  tlsDir = "${stateDir}/tls";
  tlsPair = "${tlsDir}/pair.pem";
  passwdFile = "${generatedDir}/dovecot/users";
  configPath = "/etc/postmaster/config.toml";
  defaultAccountsFile = "/etc/postmaster/accounts.toml";
  # postfix in nixpkgs is built without lmdb; hash maps are indexed too, so postfix
  # notices a rebuilt map without a reload.
  mapType = "hash";
  mapRef = name: "${mapType}:${generatedDir}/postfix/${name}";

  # The group the daemon gives the passwd-file to (postmaster writes it for a group
  # named `dovecot`, as on Debian).
  dovecotGroup = "dovecot";
  postfixUnit = "postfix.service";
  dovecotUnit = "dovecot.service";
  rspamdUnit = "rspamd.service";

  # postmaster's TLS front for IMAP, POP3 and ManageSieve (as units/ on Debian):
  # systemd holds the public ports (postmaster-tls.socket), `postmaster
  # tls-front` ends TLS with the installed pair and passes each connection on to
  # dovecot on loopback with a PROXY v2 header (the client's address, and the
  # SSL TLV that makes dovecot count it as TLS-secured). A renewal reloads the
  # front, which swaps the certificate without dropping anything; dovecot, whose
  # every reload replaces its auth process and fails the logins in flight, is no
  # longer reloaded for it. The front tells the protocols apart by the local port
  # of each socket systemd passes: 993 IMAP and 995 POP3 with implicit TLS, 143
  # IMAP, 110 POP3 and 4190 ManageSieve with STARTTLS.
  tlsFrontUnit = "postmaster-tls.service";
  # Its own user: only it (and postmaster) may read the pair's directory.
  tlsFrontUser = "postmaster-tls";
  tlsFrontPorts = [
    993
    995
    143
    110
    4190
  ];

  # DKIM: rspamd signs as postfix's milter, through its proxy worker on a unix
  # socket of postfix's group. Only postfix (and rspamd) may connect: a milter on
  # 127.0.0.1 would sign for any local user who speaks the milter protocol. As
  # services.rspamd.postfix.enable does, without its main.cf settings, which
  # would put the milter on every smtpd, port 25 included.
  milterSocket = "/run/rspamd/rspamd-milter.sock";
  milter = "unix:${milterSocket}";
  rspamdCfg = config.services.rspamd;
  # rspamd signs (DKIM) and checks what arrives on port 25 ([inbound]); either
  # needs it.
  rspamdNeeded = cfg.dkim.enable || cfg.inbound.enable;
  # The checks' own resolver: unbound on loopback (`[inbound] resolver = "local"`).
  localResolver = cfg.inbound.enable && cfg.inbound.resolver == "local";
  resolverUnit = "unbound.service";
  # Learning from Junk: rspamd's Bayes filter keeps what it learned in a Redis
  # server of its own (services.redis.servers.rspamd, unit redis-rspamd.service),
  # reached on its unix socket only: no TCP port (the module's default for a named
  # server), the socket 0660 in a 0750 directory of the server's group, which
  # rspamd joins. Debian's valkey on 127.0.0.1 without a password lets any local
  # user change what Bayes learned; here no other user may connect.
  learning = cfg.inbound.enable && cfg.inbound.learning;
  bayesCfg = config.services.redis.servers.rspamd;
  bayesUnit = "redis-rspamd.service";

  postfixCfg = config.services.postfix;
  dovecotCfg = config.services.dovecot2;
  # nixpkgs' dovecot module as the 2.4 rewrite first landed (NixOS/nixpkgs#500271,
  # NixOS 26.05) declares services.dovecot2.group and runs dovecot's auth service
  # as root; the newer one (nixos-unstable, June 2026) dropped user and group,
  # takes the internal group from settings.default_internal_group (the primary
  # group of its internal user, dovecot2) and runs the auth service as that user.
  # Either way the group is `dovecot`, which may read the passwd-file. Decided by
  # what the module declares, not by version.
  dovecotHasGroup = options.services.dovecot2 ? group;
  dovecotEffectiveGroup =
    if dovecotHasGroup then dovecotCfg.group else dovecotCfg.settings.default_internal_group;
  queueDir = postfixCfg.settings.main.queue_directory;
  # The user dovecot's auth process runs as, and so the owner of its connections
  # to postmaster's policy listener, which answers only root and
  # `[logins] policy_clients`: root with the older module (it sets
  # "service auth".user), default_internal_user with the newer (dovecot's own
  # default for that service; nixpkgs' default_internal_user is dovecot2).
  dovecotAuthUser =
    dovecotCfg.settings."service auth".user or dovecotCfg.settings.default_internal_user;
  # Password guessing ([logins]): dovecot's auth asks postmaster before each login.
  loginsGuard = cfg.logins.blockAfterFailures > 0;
  # dovecot's LMTP socket, and the one systemd holds in front of it for postfix.
  lmtpDovecotSocket = "${queueDir}/private/dovecot-lmtp";
  lmtpRelaySocket = "${queueDir}/private/postmaster-lmtp";
  dovecot24 = lib.versionAtLeast dovecotCfg.package.version "2.4";
  primaryDomain = if cfg.domains == [ ] then "localhost" else builtins.head cfg.domains;

  declared =
    cfg.accounts.mailboxes != { } || cfg.accounts.aliases != { } || cfg.accounts.catchAll != { };
  accountsPath = if declared then "${stateDir}/accounts.toml" else cfg.accountsFile;

  # The security.acme certificate tls.useACMEHost names, if it exists (a missing
  # one is an assertion with a message, not an evaluation error).
  acmeCert =
    if cfg.tls.useACMEHost == null then
      null
    else
      lib.attrByPath [ "security" "acme" "certs" cfg.tls.useACMEHost ] null config;
  http01 = cfg.tls.source == "acme" && cfg.acme.challenge == "http-01";

  inStore = p: p != null && lib.hasPrefix builtins.storeDir (toString p);

  # ---- postmaster's own configuration file ---------------------------------------

  generatedConfig = {
    host_name = cfg.hostName;
    inherit (cfg) domains;
    accounts_file = accountsPath;
    state_dir = stateDir;
    generated_dir = generatedDir;
    tls = {
      inherit (cfg.tls) source;
    }
    // optionalAttrs (cfg.tls.source == "files") {
      inherit (cfg.tls) cert key;
    };
    systemd = {
      postfix_unit = postfixUnit;
      dovecot_unit = dovecotUnit;
      rspamd_unit = rspamdUnit;
      resolver_unit = resolverUnit;
      valkey_unit = bayesUnit;
      admin_group = cfg.adminGroup;
    };
    dkim =
      if cfg.dkim.enable then
        {
          enabled = true;
          inherit milter;
          keep_published_days = cfg.dkim.keepPublishedDays;
          dns_check_seconds = cfg.dkim.dnsCheckSeconds;
          inherit (cfg.dkim) ed25519;
        }
        // optionalAttrs (cfg.dkim.rotateAfterDays != null) {
          rotate_after_days = cfg.dkim.rotateAfterDays;
        }
      else
        { enabled = false; };
    dns = {
      inherit (cfg.dns)
        spf
        dmarc
        addresses
        ttl
        ;
    };
    # Only `postmaster render` reads it on Debian; here it says what the module
    # configured, so that config.toml and the mail host agree.
    inbound = {
      enabled = cfg.inbound.enable;
      reject_score = cfg.inbound.rejectScore;
      add_header_score = cfg.inbound.addHeaderScore;
      # Learning from Junk (IMAPSieve, rspamd's Bayes in redis-rspamd): the daemon
      # watches the store while it is on.
      learning = cfg.inbound.enable && cfg.inbound.learning;
      inherit (cfg.inbound) resolver;
    };
    postfix = {
      map_type = mapType;
      message_size_limit = cfg.messageSizeLimit;
      reject_unknown_sender_domain = cfg.rejectUnknownSenderDomain;
    };
    dovecot = {
      version = if dovecot24 then "2.4" else "2.3";
      mail_root = cfg.mailRoot;
      vmail_user = cfg.vmail.user;
      vmail_uid = cfg.vmail.uid;
      vmail_gid = cfg.vmail.gid;
    };
    logins = {
      block_after_failures = cfg.logins.blockAfterFailures;
      failure_window_seconds = cfg.logins.failureWindowSeconds;
      block_seconds = cfg.logins.blockSeconds;
      policy_address = cfg.logins.policyAddress;
      policy_clients = [ dovecotAuthUser ];
    };
  }
  // optionalAttrs (cfg.tls.source == "acme") {
    acme = lib.filterAttrs (_: v: v != null) {
      inherit (cfg.acme)
        directory
        contact
        challenge
        webroot
        ;
      extra_names = cfg.acme.extraNames;
      # Interpolated, not toString: a Nix path is copied into the store, so the
      # system's closure has it.
      trust_root = if cfg.acme.trustRoot == null then null else "${cfg.acme.trustRoot}";
      eab_kid = cfg.acme.eab.kid;
      # Read from the credential systemd copies in for the daemon (LoadCredential),
      # so the key file itself can stay readable by root only.
      eab_hmac_key_file =
        if cfg.acme.eab.hmacKeyFile == null then
          null
        else
          "/run/credentials/postmaster.service/eab-hmac-key";
    };
  };

  finalConfig = lib.recursiveUpdate generatedConfig cfg.extraConfig;
  configFile = settingsFormat.generate "postmaster-config.toml" finalConfig;

  # Keys the module derives from its options, because postfix and dovecot are
  # configured from the same options: setting them in extraConfig would make
  # postmaster and the mail host disagree.
  derivedKeys = {
    host_name = "set services.postmaster.hostName instead";
    domains = "set services.postmaster.domains instead";
    accounts_file = "set services.postmaster.accountsFile (or accounts) instead";
    state_dir = "fixed at ${stateDir}";
    generated_dir = "fixed at ${generatedDir}";
    tls = "set services.postmaster.tls instead";
    acme = "set services.postmaster.acme instead";
    systemd = "fixed: the units of services.postfix, services.dovecot2 and services.rspamd";
    dkim = "set services.postmaster.dkim instead (the milter is the rspamd socket the module sets up)";
    dns = "set services.postmaster.dns instead";
    inbound = "set services.postmaster.inbound instead";
    dovecot = "set services.postmaster.mailRoot, .vmail or services.dovecot2.package instead";
    logins = "set services.postmaster.logins instead (policy_clients is the user dovecot's auth runs as)";
    "postfix.map_type" = "fixed at hash (nixpkgs' postfix has no lmdb)";
    "postfix.message_size_limit" = "set services.postmaster.messageSizeLimit instead";
    "postfix.reject_unknown_sender_domain" =
      "set services.postmaster.rejectUnknownSenderDomain instead";
  };
  clashes = lib.filterAttrs (
    key: _: lib.hasAttrByPath (lib.splitString "." key) cfg.extraConfig
  ) derivedKeys;

  # ---- accounts declared in Nix ---------------------------------------------------

  accountsTemplate = pkgs.writeText "postmaster-accounts.toml" (
    accountsLib.render {
      mailboxes = lib.mapAttrs (_: m: {
        inherit (m) quota sendAs disabled;
      }) cfg.accounts.mailboxes;
      inherit (cfg.accounts) aliases;
      catchAll = cfg.accounts.catchAll;
    }
  );

  fillAccounts = pkgs.writeShellScript "postmaster-accounts" (
    accountsLib.fillScript {
      template = "${accountsTemplate}";
      output = accountsPath;
      names = builtins.attrNames cfg.accounts.mailboxes;
    }
  );

  # ---- D-Bus and polkit: the Debian files in units/, reused ---------------------------

  busName = "io.postmaster.Supervisor1";
  unitsDir = ../units;

  # Only user postmaster may own the name; root and the admin group may call it.
  dbusPolicy = pkgs.writeTextDir "share/dbus-1/system.d/${busName}.conf" (
    builtins.replaceStrings [ ''group="postmaster-admin"'' ] [ ''group="${cfg.adminGroup}"'' ] (
      builtins.readFile (unitsDir + "/dbus-io.postmaster.Supervisor1.conf")
    )
  );

  # User postmaster may reload (and restart) postfix.service, dovecot.service,
  # rspamd.service and postmaster-tls.service, nothing else. The unit names are
  # the same on NixOS as on Debian. Without DKIM signing there is no rspamd to
  # reload: the rule then leaves it out. The rule is the Debian file with its
  # UNITS line written by the module.
  polkitRuleShared = builtins.readFile (unitsDir + "/polkit-postmaster.rules");
  polkitUnits = units: "var UNITS = [${concatStringsSep ", " (map (u: ''"${u}"'') units)}];";
  polkitUnitsAll = [
    postfixUnit
    dovecotUnit
    rspamdUnit
    tlsFrontUnit
  ];
  # The Debian file's `var UNITS = [...];` line (exactly one is expected) and the
  # names it lists.
  polkitSharedLines = builtins.filter (l: builtins.match " *var UNITS = [[].*[]];" l != null) (
    lib.splitString "\n" polkitRuleShared
  );
  polkitSharedLine =
    if builtins.length polkitSharedLines == 1 then builtins.head polkitSharedLines else null;
  polkitSharedUnits =
    if polkitSharedLine == null then
      [ ]
    else
      map builtins.head (
        builtins.filter builtins.isList (builtins.split "\"([^\"]*)\"" polkitSharedLine)
      );
  polkitRule =
    if polkitSharedLine == null then
      polkitRuleShared # (an assertion below says what is wrong)
    else
      builtins.replaceStrings
        [ polkitSharedLine ]
        [
          (
            builtins.head (builtins.match "( *).*" polkitSharedLine)
            + polkitUnits (builtins.filter (u: cfg.dkim.enable || u != rspamdUnit) polkitUnitsAll)
          )
        ]
        polkitRuleShared;

  # ---- postfix and dovecot --------------------------------------------------------

  # The submission services' options (master.cf -o), as in the Debian master.cf.
  submissionCommon = {
    smtpd_forbid_unauth_pipelining = "no";
    smtpd_sasl_auth_enable = "yes";
    smtpd_tls_auth_only = "yes";
    local_header_rewrite_clients = "static:all";
    smtpd_client_restrictions = "$mua_client_restrictions";
    smtpd_helo_restrictions = "$mua_helo_restrictions";
    smtpd_sender_restrictions = "$mua_sender_restrictions";
    smtpd_relay_restrictions = "$mua_relay_restrictions";
    smtpd_recipient_restrictions = "$mua_recipient_restrictions";
  }
  # smtpd_milters=$submission_milters (empty without DKIM signing) and
  # milter_macro_daemon_name=ORIGINATING.
  // dkimLib.submissionOptions;

  specialUse = lib.genAttrs [ "Drafts" "Junk" "Sent" "Trash" ] (name: {
    special_use = "\\${name}";
    auto = "subscribe";
  });

  # Junk filing: dovecot's LMTP runs this before each user's own script, as on
  # Debian (supervisor/src/render/templates/sieve-spam-to-junk.sieve): what rspamd
  # marked as probable spam (X-Spam: Yes, [inbound] add_header_score) goes to Junk,
  # and filing it cancels the implicit keep, so the user's script (a vacation
  # reply, a forward) never sees spam.
  spamToJunk = pkgs.writeText "spam-to-junk.sieve" ''
    require ["fileinto"];
    if header :is "X-Spam" "Yes" {
      fileinto "Junk";
    }
  '';

  inboxNamespace = {
    inbox = true;
  }
  // lib.mapAttrs' (name: value: lib.nameValuePair "mailbox ${name}" value) specialUse;

  # IMAP, POP3 and ManageSieve only from the TLS front, on loopback (`listen` and
  # haproxy_trusted_networks in dovecotCommon): every connection opens with the
  # front's PROXY v2 header. dovecot's built-in imaps and pop3s listeners (993,
  # 995) are switched off by port 0, or dovecot would bind the front's ports.
  dovecotListeners = {
    "service imap-login" = {
      "inet_listener imap" = {
        port = 10143;
        haproxy = true;
      };
      "inet_listener imaps".port = 0;
    };
    "service pop3-login" = {
      "inet_listener pop3" = {
        port = 10110;
        haproxy = true;
      };
      "inet_listener pop3s".port = 0;
    };
    # ManageSieve for the users' own filters, with the same logins, behind the
    # front's 4190 (STARTTLS there).
    "service managesieve-login"."inet_listener sieve" = {
      port = 14190;
      haproxy = true;
    };
    # postfix: virtual_transport = lmtp:unix:private/postmaster-lmtp, relayed here
    # by postmaster-lmtp.service, as postfix.
    "service lmtp"."unix_listener ${lmtpDovecotSocket}" = {
      mode = "0600";
      inherit (postfixCfg) user group;
    };
    # postfix: smtpd_sasl_path = private/auth
    "service auth"."unix_listener ${queueDir}/private/auth" = {
      mode = "0660";
      inherit (postfixCfg) user group;
    };
  };

  # Mozilla's "intermediate" profile (guidelines 6.0): forward-secret AEAD suites
  # for TLS 1.2 (TLS 1.3's are all such), as supervisor/src/render/templates has it.
  mozillaIntermediate = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

  dovecotCommon = {
    hostname = cfg.hostName;
    postmaster_address = "postmaster@${primaryDomain}";
    auth_verbose = true;
    # Dovecot still reads the pair when it starts, and ssl = required refuses
    # a password on any connection that is not secured: one through the front
    # counts as secured only when the front's PROXY header carries its SSL flag.
    ssl = "required";
    ssl_min_protocol = "TLSv1.2";
    # Nothing public: the TLS front (on this host) connects on loopback, and
    # only its PROXY headers are believed.
    listen = "127.0.0.1";
    haproxy_trusted_networks = "127.0.0.1/32";
    # Mozilla's "intermediate" TLS 1.2 suites (guidelines 6.0), as on Debian.
    ssl_cipher_list = mozillaIntermediate;
    first_valid_uid = cfg.vmail.uid;
    last_valid_uid = cfg.vmail.uid;
    first_valid_gid = cfg.vmail.gid;
    last_valid_gid = cfg.vmail.gid;
    recipient_delimiter = "+";
    # A reload (no longer one per renewal, which goes to the TLS front; an
    # admin's, a configuration switch) lets old processes finish what they serve
    # instead of ending it: with yes, lmtp answers deliveries in
    # flight "421 4.3.2 Server shutting down" (duplicates, deferrals). Stopping the
    # unit still ends them all.
    shutdown_clients = false;
    "namespace inbox" = inboxNamespace;
  }
  // dovecotListeners;

  dovecot24Settings = {
    # Pins the meaning of defaults to 2.4.0; valid for every 2.4.x.
    dovecot_config_version = mkDefault "2.4.0";
    dovecot_storage_version = mkDefault "2.4.0";
    protocols = {
      imap = true;
      pop3 = true;
      lmtp = true;
      sieve = true;
    };
    ssl_server_cert_file = tlsPair;
    ssl_server_key_file = tlsPair;
    auth_allow_cleartext = false;
    # "thomas", "thomas@example.org", "Thomas@Example.NET" -> "thomas"
    auth_username_format = "%{user | username | lower}";
    "passdb passwd-file" = {
      driver = "passwd-file";
      passwd_file_path = passwdFile;
    };
    "userdb passwd-file" = {
      driver = "passwd-file";
      passwd_file_path = passwdFile;
    };
    mail_driver = "maildir";
    mail_path = "~/Maildir";
    mail_plugins.quota = true;
    "protocol imap".mail_plugins = {
      imap_quota = true;
    }
    // optionalAttrs learning { imap_sieve = true; };
    "quota \"User quota\"".driver = "count";
    quota_storage_size = "unlimited";
    # Sieve at delivery: this host's Junk filing first, then the user's filters.
    # Set here, not through services.dovecot2.sieve.scripts: for Dovecot 2.4 one
    # generation of nixpkgs' module turns those into 2.3's sieve_before, which 2.4
    # refuses, the other ignores them. The compiled script goes where nixpkgs'
    # sieve_script_bin_path says (/tmp/dovecot-<user>): the store is read-only.
    "protocol lmtp".mail_plugins.sieve = true;
    "sieve_script spam-to-junk" = {
      type = "before";
      path = "${spamToJunk}";
    };
    "sieve_script personal" = {
      driver = "file";
      path = "~/sieve";
      active_path = "~/.dovecot.sieve";
    };
  };

  dovecot23Settings = {
    protocols = "imap pop3 lmtp sieve";
    ssl_cert = "<${tlsPair}";
    ssl_key = "<${tlsPair}";
    disable_plaintext_auth = true;
    auth_username_format = "%Ln";
    passdb = {
      driver = "passwd-file";
      args = passwdFile;
    };
    userdb = {
      driver = "passwd-file";
      args = passwdFile;
    };
    mail_location = "maildir:~/Maildir";
    mail_plugins = "$mail_plugins quota";
    "protocol imap".mail_plugins =
      "$mail_plugins imap_quota${lib.optionalString learning " imap_sieve"}";
    # Sieve at delivery: the user's filters here; this host's Junk filing runs
    # before them through services.dovecot2.sieve.scripts.before (sieve_before),
    # which nixpkgs' module copies and compiles (sievec) before dovecot starts.
    "protocol lmtp".mail_plugins = "$mail_plugins sieve";
    # nixpkgs' module gives the compiled sieve_before script to this user and
    # group (and refuses sieve.scripts without them); it is every mailbox's
    # owner anyway, as the passwd-file says.
    mail_uid = cfg.vmail.user;
    mail_gid = cfg.vmail.user;
    plugin = {
      quota = "count:User quota";
      quota_vsizes = true;
      sieve = "file:~/sieve;active=~/.dovecot.sieve";
    };
  };

  # ---- hardening, as units/postmaster.service has it --------------------------------

  # What the daemon needs, and so all it gets: read its configuration and the
  # accounts file; write /var/lib/postmaster; run postmap; talk to the system bus;
  # connect to the mail ports on 127.0.0.1 and, for ACME, to the CA. Never root, no
  # capabilities. (The accounts writer and the setup unit run the same way.)
  # postfix and dovecot: what units/{postfix,dovecot}-hardening.conf add on Debian
  # that depends on no path (their masters run as root, bind ports below 1024 and
  # become other users; nothing they run for this host's mail gains privileges).
  # The file-system limits stay Debian's only: nixpkgs lays out their directories
  # differently and no NixOS VM runs here to prove them.
  # The sandbox settings that depend on no path, shared by postmaster's own units
  # and (as defaults) postfix's and dovecot's.
  pathFreeSandbox = {
    NoNewPrivileges = true;
    RestrictSUIDSGID = true;
    PrivateDevices = true;
    PrivateIPC = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    RestrictRealtime = true;
    RestrictNamespaces = true;
    SystemCallArchitectures = "native";
  };
  mailDaemonHardening = mapAttrs (_: mkDefault) pathFreeSandbox;

  # The LMTP relay, as units/postmaster-lmtp.service: postfix's user (dovecot's
  # socket is postfix's 0600), no network but unix sockets, nothing writable, and of
  # /var only the directory of dovecot's socket (a bind mount of the directory sees
  # the socket dovecot recreates at each reload).
  lmtpRelaySandbox = pathFreeSandbox // {
    User = postfixCfg.user;
    Group = postfixCfg.group;
    UMask = "0077";
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    TemporaryFileSystem = "/var:ro";
    BindReadOnlyPaths = [ "${queueDir}/private" ];
    PrivateMounts = true;
    CapabilityBoundingSet = [ "" ];
    AmbientCapabilities = [ "" ];
    # Not RemoveIPC: it would remove user postfix's IPC objects, postfix's own.
    PrivateUsers = true;
    DevicePolicy = "closed";
    ProtectProc = "invisible";
    ProcSubset = "pid";
    PrivateNetwork = true;
    RestrictAddressFamilies = [ "AF_UNIX" ];
    IPAddressDeny = "any";
    SystemCallFilter = [
      "@system-service"
      "~@privileged @resources"
    ];
    SystemCallErrorNumber = "EPERM";
  };

  # The TLS front, as units/postmaster-tls.service: the relay's sandbox, with the
  # network it serves (clients on the ports systemd passes it, dovecot on
  # loopback): no PrivateNetwork and no IPAddressDeny, which would filter the
  # accepted clients too (they count as the service's cgroup's traffic). Of /var
  # only the pair's directory, read-only; nothing writable, no capabilities.
  tlsFrontSandbox =
    removeAttrs lmtpRelaySandbox [
      "PrivateNetwork"
      "IPAddressDeny"
    ]
    // {
      User = tlsFrontUser;
      Group = tlsFrontUser;
      BindReadOnlyPaths = [ tlsDir ];
      RestrictAddressFamilies = [
        "AF_UNIX"
        "AF_INET"
        "AF_INET6"
      ];
      # Its own user, unlike the relay's (postfix): no IPC of anyone else's.
      RemoveIPC = true;
    };

  hardening = pathFreeSandbox // {
    User = "postmaster";
    Group = "postmaster";
    StateDirectory = "postmaster";
    # o+x only: postfix and dovecot's auth pass through to the maps and the
    # passwd-file; nobody but postmaster lists them.
    StateDirectoryMode = "0751";
    # Everything postfix or dovecot read gets an explicit mode from postmaster.
    UMask = "0027";
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    # Mail is none of its business, nor are postfix's queue and private sockets.
    InaccessiblePaths = [
      "-${cfg.mailRoot}"
      "-/var/spool/mail"
      "-${queueDir}"
    ];
    CapabilityBoundingSet = [ "" ];
    AmbientCapabilities = [ "" ];
    RemoveIPC = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    # AF_NETLINK: postmap asks getifaddrs() for the host's addresses.
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_NETLINK"
      "AF_INET"
      "AF_INET6"
    ];
    SystemCallFilter = [
      "@system-service"
      "~@privileged @resources"
      # Back from @privileged: fchown() of the passwd-file to dovecot's group.
      "@chown"
    ];
    SystemCallErrorNumber = "EPERM";
  };

  # Before postfix and dovecot start: a certificate pair, the maps and the
  # passwd-file in place (dovecot does not start without a certificate).
  # `postmaster apply` reloads nothing, and installs the pair (or a self-signed
  # placeholder, until the daemon installs the real one) even when the accounts are
  # not valid yet.
  setupScript = pkgs.writeShellScript "postmaster-setup" ''
    set -u
    if ! ${lib.getExe' cfg.package "postmaster"} --config ${configPath} apply; then
      echo "postmaster apply failed (above); postfix and dovecot start with what is there," \
        "and the daemon applies the accounts once they are valid (postmaster status)." >&2
    fi
  '';

  mailboxOptions = {
    options = {
      passwordHashFile = mkOption {
        type = types.str;
        example = "/run/secrets/postmaster/thomas.hash";
        description = ''
          A file holding this mailbox's password hash: the one line
          `postmaster hash-password` prints, such as `{SHA512-CRYPT}$6$…`.

          Give a path outside the Nix store (from sops-nix, agenix, or a file you
          put there), never a Nix path literal: everything in the store is
          world-readable. The file may be readable by root only; systemd hands it
          to the unit that writes the accounts file as a credential.
        '';
      };
      quota = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "2G";
        description = ''
          The mailbox's storage quota: a size like `"500M"`, `"2G"` or `"1T"`
          (binary units, as dovecot reads them), or a number of bytes. `null`:
          no limit.
        '';
      };
      sendAs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [
          "@example.net"
          "info@example.org"
        ];
        description = ''
          More sender addresses this login may use: full addresses, or
          `"@domain"` for every address of that domain that no other login owns.
          A login may always send as its own addresses and as every alias that
          delivers to it alone.
        '';
      };
      disabled = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Refuse every login of this mailbox (IMAP, POP3, SMTP AUTH); mail to it
          is still accepted and kept.
        '';
      };
    };
  };
in
{
  options.services.postmaster = {
    enable = mkEnableOption ''
      postmaster, a postfix + dovecot mail host for your own domains whose
      accounts live in one file, kept in step with postfix and dovecot by the
      postmaster daemon (this enables and configures services.postfix and
      services.dovecot2)
    '';

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./nix/package.nix { } # postmaster from this flake";
      description = "The postmaster package (the `postmaster` command and daemon).";
    };

    hostName = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "mail.example.org";
      description = ''
        The mail host's own name: what mail clients set as their server, what
        the TLS certificate covers, what postfix says in HELO. It needs an A/AAAA
        record, and the MX records of your domains point at it.
      '';
    };

    domains = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "example.org"
        "example.net"
      ];
      description = ''
        The mail domains served here; the first is the primary one (bounces and
        the postmaster address use it). Every mailbox has an address in each of
        them: thomas@example.org and thomas@example.net reach one mailbox.
      '';
    };

    accountsFile = mkOption {
      type = types.nullOr types.str;
      default = if declared then null else defaultAccountsFile;
      defaultText = lib.literalMD ''
        `null` when accounts are declared in {option}`services.postmaster.accounts`,
        else `"${defaultAccountsFile}"`
      '';
      example = "/srv/mail/accounts.toml";
      description = ''
        The accounts file you edit at run time: mailboxes (with password hashes
        from `postmaster hash-password`), aliases and catch-alls, in the TOML
        format of postmaster's README. postmaster applies every saved change at
        once, without restarting postfix or dovecot, and keeps serving the last
        good accounts when a change is invalid (`postmaster status` says where:
        `file:line:column`).

        The file is created (with a comment that explains how to add the first
        mailbox) when missing, and made readable by the postmaster daemon
        (root-owned, group `postmaster`, mode 0640). Edit it as root.

        Set it to `null` when you declare the accounts in
        {option}`services.postmaster.accounts` instead; exactly one of the two
        holds the accounts.
      '';
    };

    accounts = {
      mailboxes = mkOption {
        type = types.attrsOf (types.submodule mailboxOptions);
        default = { };
        example = literalExpression ''
          {
            thomas.passwordHashFile = "/run/secrets/postmaster/thomas.hash";
            anna = {
              passwordHashFile = "/run/secrets/postmaster/anna.hash";
              quota = "2G";
              sendAs = [ "@example.net" ];
            };
          }
        '';
        description = ''
          Mailboxes declared in Nix, instead of an {option}`services.postmaster.accountsFile`
          you edit. A mailbox's name is its login and its local part in every
          hosted domain (a-z, 0-9, `.`, `-`, `_`).

          The accounts file is written when `postmaster-accounts.service` starts,
          with every hash read from its {option}`passwordHashFile`; no hash ever
          enters the Nix store. After a `nixos-rebuild switch` that changes the
          accounts, that unit runs again and postmaster applies the change without
          restarting postfix or dovecot. After you change only the content of a
          hash file, run `systemctl restart postmaster-accounts`.
        '';
      };

      aliases = mkOption {
        type = types.attrsOf (types.either types.str (types.listOf types.str));
        default = { };
        example = {
          postmaster = "thomas";
          "sales@example.org" = [
            "thomas"
            "anna"
          ];
          "family@example.org" = [
            "anna"
            "grandma@elsewhere.example"
          ];
        };
        description = ''
          Aliases: an address (or a bare local part, meaning that name in every
          hosted domain) and the mailbox names or outside addresses that receive
          its mail.
        '';
      };

      catchAll = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = {
          "example.org" = "thomas";
        };
        description = ''
          Per domain, who receives mail for the addresses nothing else matches. A
          catch-all never captures mail for a real mailbox or an alias. Domains
          without one reject unknown recipients at RCPT time.
        '';
      };
    };

    tls = {
      source = mkOption {
        type = types.enum [
          "acme"
          "files"
        ];
        default = if cfg.tls.useACMEHost != null then "files" else "acme";
        defaultText = literalExpression ''if tls.useACMEHost != null then "files" else "acme"'';
        description = ''
          Where the certificate comes from.

          - `"acme"`: postmaster obtains and renews it itself (see
            {option}`services.postmaster.acme`).
          - `"files"`: another tool writes {option}`tls.cert` and {option}`tls.key`
            (NixOS's security.acme, certbot, you). postmaster watches them,
            validates the pair, installs it and reloads postfix and postmaster's
            TLS front for IMAP, POP3 and ManageSieve (`postmaster-tls.service`); a
            renewal is served on every port without restarting either, and
            without touching dovecot.
        '';
      };

      useACMEHost = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "mail.example.org";
        description = ''
          Use the certificate of `security.acme.certs.<name>` (obtained by NixOS's
          own ACME client). Sets {option}`tls.source` to `"files"`, points
          {option}`tls.cert` and {option}`tls.key` at that certificate's
          `fullchain.pem` and `key.pem`, and lets the postmaster daemon read them
          (it joins the certificate's group). No `reloadServices` are needed:
          postmaster notices the renewal and reloads postfix and its TLS front
          itself.
        '';
      };

      cert = mkOption {
        type = types.nullOr types.str;
        default = if acmeCert == null then null else "${acmeCert.directory}/fullchain.pem";
        defaultText = literalExpression ''if tls.useACMEHost != null then "''${security.acme.certs.''${useACMEHost}.directory}/fullchain.pem" else null'';
        example = "/etc/letsencrypt/live/mail.example.org/fullchain.pem";
        description = ''
          With {option}`tls.source` = `"files"`: the certificate chain (leaf
          first) in PEM. The postmaster daemon (user `postmaster`) must be able
          to read it.
        '';
      };

      key = mkOption {
        type = types.nullOr types.str;
        default = if acmeCert == null then null else "${acmeCert.directory}/key.pem";
        defaultText = literalExpression ''if tls.useACMEHost != null then "''${security.acme.certs.''${useACMEHost}.directory}/key.pem" else null'';
        example = "/etc/letsencrypt/live/mail.example.org/privkey.pem";
        description = ''
          With {option}`tls.source` = `"files"`: the private key in PEM. The
          postmaster daemon must be able to read it; it never reaches postfix and
          dovecot unless it matches the certificate.
        '';
      };
    };

    acme = {
      directory = mkOption {
        type = types.str;
        default = "letsencrypt";
        example = "https://acme.test/dir";
        description = ''
          The ACME CA: `"letsencrypt"`, `"letsencrypt-staging"`, or a directory
          URL (https://).
        '';
      };

      contact = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "mailto:postmaster@example.org" ];
        description = "Contact URLs for the ACME account (`mailto:` only).";
      };

      extraNames = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "imap.example.org" ];
        description = ''
          More names on the certificate besides {option}`hostName`. Each must
          resolve to this host (http-01) and pass the challenge.
        '';
      };

      challenge = mkOption {
        type = types.enum [
          "http-01"
          "webroot"
        ];
        default = "http-01";
        description = ''
          How postmaster proves control of the names.

          - `"http-01"`: postmaster answers on port 80 itself, through a socket
            systemd opens for it (`postmaster-acme.socket`); nothing else may
            listen on port 80.
          - `"webroot"`: postmaster writes the challenge files into
            {option}`acme.webroot`, which your web server serves at
            `http://<name>/.well-known/acme-challenge/`.
        '';
      };

      webroot = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/acme/acme-challenge";
        description = ''
          With {option}`acme.challenge` = `"webroot"`: the directory your web
          server serves for every certificate name. The postmaster daemon must be
          able to write to it.
        '';
      };

      trustRoot = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = literalExpression "./pebble-ca.pem";
        description = ''
          An extra root certificate to trust for the CA's API (test CAs such as
          pebble). Public data: a Nix path is fine.
        '';
      };

      eab = {
        kid = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "External account binding: the key id, for CAs that want one.";
        };
        hmacKeyFile = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "/run/secrets/postmaster/eab-hmac-key";
          description = ''
            External account binding: a file with the HMAC key. A path outside the
            Nix store; it may be readable by root only (systemd hands it to the
            daemon as a credential).
          '';
        };
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open the mail ports in the firewall: 25 (SMTP), 465 and 587 (submission),
        993 and 143 (IMAP), 995 and 110 (POP3), 4190 (ManageSieve), and 80 when postmaster answers
        ACME http-01 challenges itself.
      '';
    };

    adminGroup = mkOption {
      type = types.str;
      default = "postmaster-admin";
      description = ''
        Members of this group may use postmaster's D-Bus interface like root:
        `postmaster status`, `postmaster reload`, `postmaster renew`.
      '';
    };

    mailRoot = mkOption {
      type = types.str;
      default = "/var/vmail";
      description = "Where mail is stored: `<mailRoot>/<mailbox>/Maildir`, owned by the vmail user.";
    };

    vmail = {
      user = mkOption {
        type = types.str;
        default = "vmail";
        description = "The user (and group) that owns all mail; created by this module.";
      };
      uid = mkOption {
        type = types.ints.positive;
        default = 5000;
        description = "The vmail user's uid.";
      };
      gid = mkOption {
        type = types.ints.positive;
        default = 5000;
        description = "The vmail group's gid.";
      };
    };

    messageSizeLimit = mkOption {
      type = types.ints.positive;
      default = 67108864;
      description = "The largest message postfix accepts, in bytes (default 64 MiB).";
    };

    rejectUnknownSenderDomain = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Refuse mail on port 25 whose sender domain does not exist in DNS. Needs
        working DNS; turn it off only on hosts without it (test networks).
      '';
    };

    dkim = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Sign every message submitted on 587/465 and every message the host
          itself sends (bounces, `sendmail`) with DKIM, for the domain of its From
          address. rspamd ({option}`services.rspamd`, enabled by this) signs as
          postfix's milter, with keys postmaster makes (RSA-2048, one selector per
          domain and key) in `/var/lib/postmaster/dkim`, readable by rspamd's
          group only. While rspamd does not answer, such mail is refused with a
          temporary error (451 4.7.1), never sent unsigned. Mail arriving on port
          25 is checked by the same rspamd, never signed
          ({option}`services.postmaster.inbound`). `postmaster dns` prints the
          records to publish.
        '';
      };
      rotateAfterDays = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        example = 180;
        description = ''
          Start a key rotation on its own once the key in use is this many days
          old; `null`: only `postmaster dkim rotate` does. A new key is used only
          once DNS shows its record.
        '';
      };
      keepPublishedDays = mkOption {
        type = types.ints.positive;
        default = 7;
        description = ''
          How long a replaced selector must stay published, so that mail signed
          with it and still on its way verifies.
        '';
      };
      dnsCheckSeconds = mkOption {
        type = types.ints.positive;
        default = 300;
        description = "How often DNS is asked about the selectors, in seconds.";
      };
      ed25519 = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Also sign with an Ed25519 key (RFC 8463), a second signature beside the
          RSA one; `postmaster dns` then lists its record too.
        '';
      };
    };

    dns = {
      spf = mkOption {
        type = types.strMatching "v=spf1.*";
        default = "v=spf1 mx -all";
        description = ''
          The SPF record `postmaster dns` prints (and `--check` expects) for every
          hosted domain.
        '';
      };
      dmarc = mkOption {
        type = types.strMatching "v=DMARC1;.*";
        default = "v=DMARC1; p=quarantine";
        example = "v=DMARC1; p=none";
        description = "The DMARC record (`_dmarc.<domain>`) of every hosted domain.";
      };
      addresses = mkOption {
        type = types.listOf (types.strMatching "[0-9a-fA-F:.]+");
        default = [ ];
        example = [
          "192.0.2.25"
          "2001:db8::25"
        ];
        description = ''
          The host's public IP addresses: printed as A/AAAA records of
          {option}`hostName`, and their reverse names (PTR) checked. Empty: `postmaster
          dns --check` looks the host name up instead.
        '';
      };
      ttl = mkOption {
        type = types.ints.positive;
        default = 3600;
        description = "The TTL of the records `postmaster dns` prints.";
      };
    };

    inbound = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Check every message arriving on port 25 with rspamd
          ({option}`services.rspamd`, enabled by this) as postfix's milter: SPF,
          DKIM, DMARC and a spam score, with an `Authentication-Results` header
          mail clients can show. Refused at SMTP time (the sending server tells
          its user; nothing bounces to forged senders): clear spam, mail failing
          its domain's DMARC `p=reject`, and mail From a hosted domain that fails
          DMARC (nobody forges your own domains to you; publish the DMARC record
          `postmaster dns` prints). While rspamd does not answer, mail on 25 is
          deferred (4xx): the sending server retries, nothing is lost.
          Greylisting is off. `false`: mail on 25 is accepted unchecked.
        '';
      };
      rejectScore = mkOption {
        type = types.numbers.positive;
        default = 15;
        description = ''
          rspamd's score from which a message is refused at SMTP time (ordinary
          mail scores around 0).
        '';
      };
      addHeaderScore = mkOption {
        type = types.numbers.positive;
        default = 6;
        example = 5.5;
        description = ''
          The score from which a message is delivered with an `X-Spam: Yes`
          header (as is mail failing its domain's DMARC `p=quarantine`); below
          {option}`services.postmaster.inbound.rejectScore`.
        '';
      };
      resolver = mkOption {
        type = types.enum [
          "local"
          "system"
        ];
        default = "local";
        description = ''
          Whom rspamd asks about SPF, DKIM, DMARC and DNS blocklists. `"local"`:
          unbound on 127.0.0.1 ({option}`services.unbound`, enabled by this),
          caching and DNSSEC-validating, resolving from the root servers itself
          (public blocklists refuse queries that come through shared public
          resolvers); while it does not run, mail on port 25 is deferred. The rest
          of the host keeps its resolvers ({option}`services.unbound.resolveLocalQueries`
          is `false` unless you set it). `"system"`: the resolvers of
          `/etc/resolv.conf`.
        '';
      };
      learning = mkOption {
        type = types.bool;
        default = cfg.inbound.enable;
        defaultText = lib.literalExpression "config.services.postmaster.inbound.enable";
        description = ''
          Teach rspamd's Bayes filter from what users do: a message moved (or
          copied) into Junk is learned as spam, one moved out of Junk as ham
          (into Trash: nothing), through dovecot's IMAPSieve and rspamd's
          controller socket, which only the mail user's group may reach. Bayes
          keeps what it learned in a Redis server of its own
          ({option}`services.redis.servers.rspamd`, enabled by this; its unix
          socket only, for rspamd's group); nothing is learned on its own
          (autolearn off), and it starts classifying after 200 messages learned
          as spam and 200 as ham. Needs
          {option}`services.postmaster.inbound.enable`.
        '';
      };
    };

    logins = {
      blockAfterFailures = mkOption {
        type = types.ints.unsigned;
        default = 10;
        example = 5;
        description = ''
          Password guessing: after this many failed logins from one address
          within {option}`services.postmaster.logins.failureWindowSeconds` (IMAP,
          POP3 and SMTP AUTH alike), every further login from it is refused for
          {option}`services.postmaster.logins.blockSeconds`, even with the right
          password; other addresses are not affected (an IPv6 address counts by
          its /64). dovecot's auth asks the postmaster daemon before each login
          and reports how it ended (dovecot's auth policy,
          {option}`services.dovecot2.includeFiles`); only the daemon's answers
          count, no firewall, no root. `postmaster status` lists the blocked
          addresses, `postmaster unblock ADDRESS` lifts one. While the daemon does
          not answer, logins are allowed. `0`: nobody is blocked, and dovecot
          asks nothing.
        '';
      };
      failureWindowSeconds = mkOption {
        type = types.ints.positive;
        default = 600;
        description = "The failed logins counted are those of the last this many seconds.";
      };
      blockSeconds = mkOption {
        type = types.ints.positive;
        default = 900;
        description = "How long a blocked address is refused, in seconds.";
      };
      policyAddress = mkOption {
        type = types.strMatching loginsLib.policyAddressPattern;
        default = "127.0.0.1:10041";
        example = "[::1]:10041";
        description = ''
          Where the daemon answers dovecot's auth policy requests (HTTP; a
          loopback address and port). It answers only connections made by root
          and by the user dovecot's auth runs as, which the module writes into
          `[logins] policy_clients`: any other local user could otherwise report
          failed logins for an address and so block it.
        '';
      };
    };

    extraConfig = mkOption {
      type = settingsFormat.type;
      default = { };
      example = {
        insecure_allow_plain_passwords = false;
      };
      description = ''
        More settings for postmaster's configuration file
        (`/etc/postmaster/config.toml`; every key is documented in
        `postmaster.example.toml`), merged over what the module generates. Keys
        the module derives from its own options (because postfix and dovecot are
        configured from them too) are refused: set the option instead.
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion =
            cfg.hostName != null && builtins.match "[a-z0-9-]+([.][a-z0-9-]+)+" cfg.hostName != null;
          message = ''
            services.postmaster.hostName must be set to the mail host's fully qualified name in lowercase,
            like services.postmaster.hostName = "mail.example.org"; (it has ${
              if cfg.hostName == null then "no value" else "the value `${cfg.hostName}`"
            }).
          '';
        }
        {
          assertion = cfg.domains != [ ];
          message = ''services.postmaster.domains is empty: list the mail domains served here, like services.postmaster.domains = [ "example.org" ];'';
        }
        {
          assertion = builtins.all (d: builtins.match "[a-z0-9-]+([.][a-z0-9-]+)+" d != null) cfg.domains;
          message = "services.postmaster.domains: every domain must be a lowercase name with at least two labels, like example.org (got ${builtins.toJSON cfg.domains}).";
        }
        {
          assertion = !(declared && cfg.accountsFile != null);
          message = ''
            services.postmaster: the accounts are declared in services.postmaster.accounts and
            services.postmaster.accountsFile is set too (to ${toString cfg.accountsFile}). Exactly one of them
            holds the accounts: set services.postmaster.accountsFile = null; to use the declared ones, or remove
            the declared accounts to edit the file.
          '';
        }
        {
          assertion = declared || cfg.accountsFile != null;
          message = ''
            services.postmaster has no accounts: services.postmaster.accountsFile is null and nothing is declared
            in services.postmaster.accounts. Declare mailboxes there, or leave accountsFile at its default
            (${defaultAccountsFile}) and edit that file.
          '';
        }
        {
          assertion = !inStore cfg.accountsFile;
          message = ''
            services.postmaster.accountsFile is in the Nix store (${toString cfg.accountsFile}), where password
            hashes are world-readable and the file cannot be edited. Give a path like ${defaultAccountsFile}, or
            declare the mailboxes in services.postmaster.accounts.mailboxes with a passwordHashFile each.
          '';
        }
        {
          assertion = !declared || cfg.accounts.mailboxes != { };
          message = "services.postmaster.accounts declares aliases or catch-alls but no mailbox: add at least one in services.postmaster.accounts.mailboxes.";
        }
        {
          assertion = builtins.all accountsLib.isMailboxName (builtins.attrNames cfg.accounts.mailboxes);
          message = ''
            services.postmaster.accounts.mailboxes: these names are not valid mailbox names (a-z, 0-9, ".", "-", "_";
            no leading, trailing or double dot; at most 64 characters):
            ${concatStringsSep ", " (
              builtins.filter (n: !accountsLib.isMailboxName n) (builtins.attrNames cfg.accounts.mailboxes)
            )}
          '';
        }
        {
          assertion = builtins.all (m: !inStore m.passwordHashFile && lib.hasPrefix "/" m.passwordHashFile) (
            builtins.attrValues cfg.accounts.mailboxes
          );
          message = ''
            services.postmaster.accounts.mailboxes.<name>.passwordHashFile must be an absolute path outside the Nix
            store (for example /run/secrets/postmaster/thomas.hash from sops-nix or agenix): a hash in the store is
            world-readable. Offending mailboxes: ${
              concatStringsSep ", " (
                builtins.attrNames (
                  lib.filterAttrs (
                    _: m: inStore m.passwordHashFile || !lib.hasPrefix "/" m.passwordHashFile
                  ) cfg.accounts.mailboxes
                )
              )
            }
          '';
        }
        {
          assertion = cfg.tls.source != "files" || (cfg.tls.cert != null && cfg.tls.key != null);
          message = ''
            services.postmaster.tls.source = "files" needs both services.postmaster.tls.cert and
            services.postmaster.tls.key (the chain and the private key another tool writes), or
            services.postmaster.tls.useACMEHost = "<a name in security.acme.certs>"; to use NixOS's ACME client.
          '';
        }
        {
          assertion = cfg.tls.useACMEHost == null || cfg.tls.source == "files";
          message = ''services.postmaster.tls.useACMEHost is set, so the certificate comes from security.acme: leave services.postmaster.tls.source at "files" (its default then), or unset useACMEHost to let postmaster run ACME itself.'';
        }
        {
          assertion = cfg.tls.useACMEHost == null || acmeCert != null;
          message = ''services.postmaster.tls.useACMEHost = "${toString cfg.tls.useACMEHost}", but there is no security.acme.certs."${toString cfg.tls.useACMEHost}": declare that certificate (with its domain and challenge).'';
        }
        {
          assertion =
            !(cfg.tls.source == "acme" && cfg.acme.challenge == "webroot" && cfg.acme.webroot == null);
          message = ''services.postmaster.acme.challenge = "webroot" needs services.postmaster.acme.webroot: the directory your web server serves at http://${toString cfg.hostName}/.well-known/acme-challenge/ (minus that suffix).'';
        }
        {
          assertion = !(http01 && (lib.attrByPath [ "services" "nginx" "enable" ] false config));
          message = ''
            services.postmaster answers ACME http-01 challenges on port 80 itself, but services.nginx is enabled
            and listens there. Either let nginx serve the challenges: set
              services.postmaster.acme.challenge = "webroot";
              services.postmaster.acme.webroot = "/var/lib/acme/acme-challenge";
            and serve that directory in nginx
              (services.nginx.virtualHosts."${toString cfg.hostName}".locations."/.well-known/acme-challenge/".root),
            or let NixOS's ACME client get the certificate for nginx and postmaster alike:
              services.postmaster.tls.useACMEHost = "${toString cfg.hostName}";
          '';
        }
        {
          assertion =
            !(
              http01
              && (
                (lib.attrByPath [ "services" "caddy" "enable" ] false config)
                || (lib.attrByPath [ "services" "httpd" "enable" ] false config)
              )
            );
          message = ''
            services.postmaster answers ACME http-01 challenges on port 80 itself, but another web server
            (services.caddy or services.httpd) is enabled and listens there. Use
            services.postmaster.acme.challenge = "webroot"; with a webroot that server serves, or
            services.postmaster.tls.useACMEHost.
          '';
        }
        {
          assertion =
            !(
              http01
              && builtins.any (c: (c.listenHTTP or null) != null && lib.hasSuffix ":80" c.listenHTTP) (
                builtins.attrValues (lib.attrByPath [ "security" "acme" "certs" ] { } config)
              )
            );
          message = ''
            services.postmaster answers ACME http-01 challenges on port 80 itself, but a certificate in
            security.acme.certs also listens on :80 (listenHTTP). Use services.postmaster.tls.useACMEHost for
            that certificate instead, or move one of them to a webroot.
          '';
        }
        {
          assertion = (cfg.acme.eab.kid == null) == (cfg.acme.eab.hmacKeyFile == null);
          message = "services.postmaster.acme.eab: external account binding needs both eab.kid and eab.hmacKeyFile, or neither.";
        }
        {
          assertion = !inStore cfg.acme.eab.hmacKeyFile;
          message = "services.postmaster.acme.eab.hmacKeyFile is in the Nix store, where it is world-readable: give a path outside it (for example from sops-nix or agenix).";
        }
        {
          assertion = clashes == { };
          message = ''
            services.postmaster.extraConfig sets keys the module derives from its own options (postfix and dovecot
            are configured from the same options, so they would disagree with postmaster):
            ${concatStringsSep "\n" (lib.mapAttrsToList (key: hint: "  ${key}: ${hint}") clashes)}
          '';
        }
        {
          # units/polkit-postmaster.rules is shared with Debian; the units it lets
          # postmaster reload must stay those of nixpkgs' postfix, dovecot and
          # rspamd modules and the TLS front's (in any order: the module writes the
          # list itself).
          assertion =
            builtins.sort builtins.lessThan polkitSharedUnits == builtins.sort builtins.lessThan polkitUnitsAll;
          message = "units/polkit-postmaster.rules must have one line `${polkitUnits polkitUnitsAll}` (in any order), the units of services.postfix, services.dovecot2, services.rspamd and postmaster's TLS front; it has ${
            if polkitSharedLine == null then
              "${toString (builtins.length polkitSharedLines)} such lines"
            else
              "`${builtins.head (builtins.match " *(.*)" polkitSharedLine)}`"
          }. Give the NixOS module a rule of its own if they differ on purpose.";
        }
        {
          assertion = !(rspamdNeeded && rspamdCfg.postfix.enable);
          message = ''
            services.rspamd.postfix.enable puts rspamd's milter on every smtpd, and its own settings beside the ones
            services.postmaster sets up (signing for submitted and local mail, checks for port 25): leave it off.
            services.postmaster.dkim and services.postmaster.inbound configure rspamd and postfix themselves.
          '';
        }
        {
          assertion = cfg.inbound.learning -> cfg.inbound.enable;
          message = "services.postmaster.inbound.learning needs services.postmaster.inbound.enable: what Junk teaches is rspamd's filter of the mail arriving on port 25, which is off.";
        }
        {
          assertion = cfg.inbound.addHeaderScore < cfg.inbound.rejectScore;
          message = ''
            services.postmaster.inbound.addHeaderScore (${inboundLib.score cfg.inbound.addHeaderScore}) must be below
            services.postmaster.inbound.rejectScore (${inboundLib.score cfg.inbound.rejectScore}): mail is marked as
            probable spam before it scores high enough to be refused.
          '';
        }
        {
          assertion = dovecotEffectiveGroup == dovecotGroup;
          message = ''
            dovecot's group is "${dovecotEffectiveGroup}", but postmaster gives the dovecot passwd-file to the
            group "${dovecotGroup}"; leave services.dovecot2.${
              if dovecotHasGroup then "group" else "settings.default_internal_group"
            } at the value services.postmaster sets.
          '';
        }
      ];

      warnings =
        optional
          (
            cfg.tls.source == "acme"
            && cfg.acme.contact == [ ]
            && lib.hasPrefix "letsencrypt" cfg.acme.directory
          )
          "services.postmaster.acme.contact is empty: Let's Encrypt can then not warn you about problems with your certificate. Set it to [ \"mailto:you@${primaryDomain}\" ].";

      environment.etc."postmaster/config.toml".source = configFile;
      environment.systemPackages = [
        cfg.package
        # Pigeonhole: dovecot loads its sieve plugins from /run/current-system/sw
        # (nixpkgs' mail_plugin_dir); ManageSieve's programs it names by store path.
        dovecotCfg.package.passthru.dovecot_pigeonhole
      ];

      users.users.postmaster = {
        isSystemUser = true;
        group = "postmaster";
        description = "postmaster mail host supervisor";
      };
      users.groups.postmaster = { };
      users.groups.${cfg.adminGroup} = { };
      # The TLS front's user: a system user without home or shell (nixpkgs'
      # defaults for one: /var/empty, nologin).
      users.users.${tlsFrontUser} = {
        isSystemUser = true;
        group = tlsFrontUser;
        description = "postmaster TLS front (IMAP, POP3, ManageSieve)";
      };
      users.groups.${tlsFrontUser} = { };
      users.users.${cfg.vmail.user} = {
        isSystemUser = true;
        uid = cfg.vmail.uid;
        group = cfg.vmail.user;
        home = cfg.mailRoot;
        description = "Virtual mail (postmaster)";
      };
      users.groups.${cfg.vmail.user}.gid = cfg.vmail.gid;
      # nixpkgs' dovecot module creates its group only under its default name
      # (dovecot2); its user gets this one as its primary group instead.
      users.groups.${dovecotGroup} = { };

      # As units/tmpfiles-postmaster.conf: there before postfix and dovecot start.
      systemd.tmpfiles.rules = [
        "d /etc/postmaster 0755 root root - -"
        "d ${stateDir} 0751 postmaster postmaster - -"
        "d ${generatedDir} 0751 postmaster postmaster - -"
        # postfix's maps: read by postfix's daemons and by `postmap -q` as any user.
        "d ${generatedDir}/postfix 0755 postmaster postmaster - -"
        # dovecot's passwd-file, 0640 group dovecot. setgid: what postmaster creates
        # here is dovecot's group from the start, so the daemon needs no membership.
        "d ${generatedDir}/dovecot 2750 postmaster ${dovecotGroup} - -"
        # The installed pair: postfix and dovecot read it as root, the TLS front
        # as its group. setgid: the pair postmaster writes (0640) is that group's
        # from the start, without postmaster being a member; the rest there
        # stays postmaster's own (0600).
        "d ${tlsDir} 2750 postmaster ${tlsFrontUser} - -"
        # A pair installed before the front existed (0600, group postmaster).
        "z ${tlsPair} 0640 postmaster ${tlsFrontUser} - -"
        "d ${cfg.mailRoot} 0750 ${cfg.vmail.user} ${cfg.vmail.user} - -"
      ]
      ++ optionals cfg.dkim.enable [
        # rspamd's table of DKIM keys (which key signs which domain): no secret in it.
        "d ${generatedDir}/rspamd 0755 postmaster postmaster - -"
        # The DKIM private keys: rspamd reads them as its group. setgid: every key
        # is rspamd's group from the moment it exists, without postmaster being a
        # member.
        "d ${stateDir}/dkim 2750 postmaster ${rspamdCfg.group} - -"
      ]
      ++ optionals (!declared && cfg.accountsFile != null) [
        # Created once, with a first step for the admin (an empty file is refused:
        # `postmaster status` then says what to add). Its hashes are for root and
        # the daemon only: owner, group and mode are put right on every boot.
        (
          "f ${cfg.accountsFile} 0640 root postmaster - "
          + "# postmaster accounts: one [mailboxes.NAME] table per mailbox, then [aliases] and [catch_all].\\n"
          + "# Make a hash with `postmaster hash-password`, then add:\\n"
          + "#\\n# [mailboxes.thomas]\\n# password = \"{SHA512-CRYPT}$6$...\"\\n"
          + "#\\n# Check with `postmaster status`: every mistake is shown as file:line:column.\\n"
        )
        "z ${cfg.accountsFile} 0640 root postmaster - -"
      ];

      services.dbus.packages = [ dbusPolicy ];
      security.polkit.enable = true;
      security.polkit.extraConfig = polkitRule;

      networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall (
        [
          25
          465
          587
          993
          995
          143
          110
          4190
        ]
        ++ optional http01 80
      );

      # ---- postfix ------------------------------------------------------------------
      services.postfix = {
        enable = true;
        enableSmtp = true;
        enableSubmission = true;
        enableSubmissions = true;
        # 587: STARTTLS required, AUTH only after it.
        submissionOptions = submissionCommon // {
          syslog_name = "postfix/submission";
          smtpd_tls_security_level = "encrypt";
        };
        # 465: implicit TLS (the module adds smtpd_tls_wrappermode=yes).
        submissionsOptions = submissionCommon // {
          syslog_name = "postfix/submissions";
          smtpd_tls_security_level = "encrypt";
        };
        settings.main = {
          myhostname = cfg.hostName;
          # Locally generated mail (bounces, cron, "postmaster") is addressed to the
          # primary domain, so it reaches a mailbox or an alias.
          mydomain = primaryDomain;
          myorigin = "$mydomain";
          smtpd_banner = "$myhostname ESMTP $mail_name";
          biff = false;
          append_dot_mydomain = false;

          inet_interfaces = "all";
          inet_protocols = "all";
          mynetworks = [
            "127.0.0.0/8"
            "[::ffff:127.0.0.0]/104"
            "[::1]/128"
          ];
          # Local delivery only for localhost: the hosted domains are virtual.
          mydestination = [ "localhost" ];

          virtual_mailbox_domains = cfg.domains;
          virtual_mailbox_maps = [ (mapRef "virtual_mailbox") ];
          virtual_alias_maps = [ (mapRef "virtual_alias") ];
          # systemd's socket, relayed to dovecot's (postmaster-lmtp, below).
          virtual_transport = "lmtp:unix:private/postmaster-lmtp";

          recipient_delimiter = "+";
          message_size_limit = cfg.messageSizeLimit;
          mailbox_size_limit = 0;

          # SASL through dovecot's auth socket; AUTH is enabled only on 587/465.
          smtpd_sasl_type = "dovecot";
          smtpd_sasl_path = "private/auth";
          smtpd_sasl_auth_enable = false;
          smtpd_sasl_security_options = "noanonymous";
          smtpd_sender_login_maps = [ (mapRef "sender_login") ];

          # The pair postmaster installs: key, then chain, in one file.
          smtpd_tls_chain_files = [ tlsPair ];
          smtpd_tls_security_level = "may";
          smtpd_tls_auth_only = true;
          smtpd_tls_protocols = ">=TLSv1.2";
          smtpd_tls_mandatory_protocols = ">=TLSv1.2";
          # Port 25: what the world's MTAs speak, but no anonymous, NULL or export
          # suite; 587/465 (mandatory TLS, wrapper mode included): Mozilla's
          # intermediate suites only.
          smtpd_tls_ciphers = "medium";
          smtpd_tls_exclude_ciphers = [
            "aNULL"
            "eNULL"
            "EXPORT"
          ];
          smtpd_tls_mandatory_ciphers = "high";
          smtpd_tls_mandatory_exclude_ciphers = [
            "aNULL"
            "eNULL"
            "EXPORT"
          ];
          tls_high_cipherlist = mozillaIntermediate;
          smtpd_tls_loglevel = 1;

          smtp_tls_protocols = ">=TLSv1.2";
          smtp_tls_mandatory_protocols = ">=TLSv1.2";
          smtp_tls_session_cache_database = "btree:\${data_directory}/smtp_scache";
          smtp_tls_loglevel = 1;

          smtpd_forbid_unauth_pipelining = true;
          smtpd_forbid_bare_newline = "normalize";
          disable_vrfy_command = true;
          smtpd_helo_required = true;

          # Port 25 (MX): no relay, no AUTH, unknown recipients rejected at RCPT.
          smtpd_helo_restrictions = [ "reject_invalid_helo_hostname" ];
          smtpd_sender_restrictions = [
            "reject_non_fqdn_sender"
          ]
          ++ optional cfg.rejectUnknownSenderDomain "reject_unknown_sender_domain";
          smtpd_relay_restrictions = [
            "permit_mynetworks"
            "reject_unauth_destination"
          ];
          smtpd_recipient_restrictions = [
            "reject_non_fqdn_recipient"
            "reject_unlisted_recipient"
          ];
          smtpd_reject_unlisted_recipient = true;

          # Submission (587, 465): master.cf points at these.
          mua_client_restrictions = [
            "permit_sasl_authenticated"
            "reject"
          ];
          mua_helo_restrictions = "";
          mua_sender_restrictions = [
            "reject_non_fqdn_sender"
            "reject_sender_login_mismatch"
          ];
          mua_relay_restrictions = [
            "permit_sasl_authenticated"
            "reject"
          ];
          mua_recipient_restrictions = [
            "reject_non_fqdn_recipient"
            "reject_unlisted_recipient"
          ];
        }
        # DKIM signing (as templates/main.cf): submission_milters and the rest.
        // dkimLib.postfixMain {
          enabled = cfg.dkim.enable;
          inherit milter;
        }
        # The checks of port 25 (as templates/main.cf): inbound_milters, which
        # the smtp service uses (below).
        // inboundLib.postfixMain {
          enabled = cfg.inbound.enable;
          inherit milter;
        };
        # Port 25's smtpd, as templates/master.cf: -o smtpd_milters=$inbound_milters.
        settings.master.smtp_inet.args = lib.concatLists (
          lib.mapAttrsToList (key: value: [
            "-o"
            "${key}=${value}"
          ]) inboundLib.smtpOptions
        );
      };

      # ---- dovecot ------------------------------------------------------------------
      services.dovecot2 = {
        enable = true;
        enablePAM = false;
        # This module creates the vmail user (settings.mail_uid with Dovecot 2.3)
        # itself, with its uid and home.
        createMailUser = false;
      }
      // optionalAttrs dovecotHasGroup { group = mkDefault dovecotGroup; }
      // {
        # Dovecot 2.4 names the script in settings (dovecot24Settings).
        sieve.scripts = optionalAttrs (!dovecot24) { before = spamToJunk; };
        # Learning from Junk: IMAPSieve's block of dovecot.conf, the same text
        # `postmaster render` puts into Debian's (templates/dovecot-*-learning.conf):
        # the scripts and programs it names are in /etc below.
        includeFiles =
          lib.optional learning (
            pkgs.writeText "postmaster-learning.conf" (
              inboundLib.dovecotLearning (if dovecot24 then "2.4" else "2.3")
            )
          )
          # Password guessing: dovecot's auth policy block, the same text
          # `postmaster render` puts into Debian's dovecot.conf; nothing with the
          # guard off (dovecot then asks nobody).
          ++ lib.optional loginsGuard (
            pkgs.writeText "postmaster-auth-policy.conf" (
              loginsLib.dovecotPolicy {
                version = if dovecot24 then "2.4" else "2.3";
                inherit (cfg.logins)
                  blockAfterFailures
                  failureWindowSeconds
                  blockSeconds
                  policyAddress
                  ;
              }
            )
          );
        settings = mkMerge [
          (optionalAttrs (!dovecotHasGroup) { default_internal_group = mkDefault dovecotGroup; })
          dovecotCommon
          (if dovecot24 then dovecot24Settings else dovecot23Settings)
        ];
      };

      # Not ordered after the daemon (see units/postmaster.service): systemd orders
      # every job of two ordered units, reloads included, so a reload of postfix the
      # daemon waits for before its READY=1 would wait for the daemon's own start
      # job. What they need at their start, postmaster-setup puts there.
      systemd.services.postfix = {
        wants = [ "postmaster-setup.service" ];
        after = [ "postmaster-setup.service" ];
        serviceConfig = mailDaemonHardening;
      };
      # dovecot puts its sockets into postfix's queue directory, which postfix
      # creates when it starts.
      systemd.services.dovecot = {
        wants = [ "postmaster-setup.service" ];
        after = [
          "postmaster-setup.service"
          "postfix.service"
        ];
        # Without NoNewPrivileges: a Sieve vacation reply goes out through
        # sendmail, whose wrapper is setgid postdrop (as on Debian).
        serviceConfig = removeAttrs mailDaemonHardening [ "NoNewPrivileges" ] // {
          # A reload (no longer at every new certificate: the TLS front takes
          # those) is the signal `doveadm reload` sends, without a sandbox set up
          # for the command that sends it, as units/dovecot-hardening.conf does on
          # Debian.
          ExecReload = lib.mkForce "+${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        };
      };

      systemd.services.postmaster-setup = {
        description = "postmaster: the maps, the passwd-file and a certificate before postfix and dovecot start";
        after = [ "systemd-tmpfiles-setup.service" ];
        path = [ postfixCfg.package ];
        # Applied again by the running daemon; a new configuration is its business.
        restartIfChanged = false;
        serviceConfig = hardening // {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = setupScript;
        };
      };

      # ---- the daemon ---------------------------------------------------------------
      systemd.services.postmaster = {
        description = "postmaster mail host supervisor (postfix and dovecot configuration)";
        wantedBy = [ "multi-user.target" ];
        # After postfix and dovecot, not before them: see above.
        after = [
          "network.target"
          "nss-lookup.target"
          "postfix.service"
          "dovecot.service"
          "postmaster-setup.service"
        ];
        # postmap (the maps) and postconf (its map types) come from postfix.
        path = [ postfixCfg.package ];
        # A changed configuration is read again on SIGHUP: no restart.
        reloadTriggers = [ configFile ];
        # The http-01 socket's fd is handed over when the daemon starts.
        restartTriggers = optional http01 "postmaster-acme.socket";
        serviceConfig =
          hardening
          // {
            # Answers SIGHUP with RELOADING=1 … READY=1; pings the watchdog.
            Type = "notify-reload";
            NotifyAccess = "main";
            WatchdogSec = "30s";
            ExecStart = "${lib.getExe' cfg.package "postmaster"} --config ${configPath} run";
            # A broken configuration does not make it exit (it keeps the last good
            # state and reports); crashes and watchdog timeouts restart it.
            Restart = "on-failure";
            RestartSec = "2s";
            RestartSteps = 6;
            RestartMaxDelaySec = "2min";
          }
          // optionalAttrs (acmeCert != null) {
            # security.acme's certificate is readable by its group.
            SupplementaryGroups = [ acmeCert.group ];
          }
          // optionalAttrs (cfg.tls.source == "acme" && cfg.acme.webroot != null) {
            # The challenge files go there.
            ReadWritePaths = [ cfg.acme.webroot ];
          }
          // optionalAttrs (cfg.acme.eab.hmacKeyFile != null) {
            LoadCredential = [ "eab-hmac-key:${cfg.acme.eab.hmacKeyFile}" ];
          };
      };
    }

    {
      # ---- postfix's LMTP deliveries to dovecot, across dovecot's reloads ----------
      # As units/postmaster-lmtp.{socket,service}: a dovecot reload unlinks and
      # recreates its LMTP socket, and a delivery postfix had just connected to the
      # old one was deferred. postfix delivers to this socket instead, which systemd
      # holds; `postmaster lmtp-relay` behind it waits for dovecot's greeting (trying
      # again while the socket is replaced) and then passes the dialogue on,
      # sending again a RCPT that a reload's cut user lookup made dovecot answer
      # 451 4.3.0. Only postfix may connect (0600), as to dovecot's own socket.
      # private/ is postfix's; postfix-setup's `postfix set-permissions` makes it
      # postfix's 0700 even if systemd made it first.
      systemd.sockets.postmaster-lmtp = {
        description = "postmaster LMTP relay socket (postfix to dovecot)";
        wantedBy = [ "sockets.target" ];
        listenStreams = [ lmtpRelaySocket ];
        socketConfig = {
          SocketUser = postfixCfg.user;
          SocketGroup = postfixCfg.group;
          SocketMode = "0600";
          DirectoryMode = "0700";
          # No dead socket left in postfix's directory once the unit is gone.
          RemoveOnStop = true;
          Service = "postmaster-lmtp.service";
        };
      };
      systemd.services.postmaster-lmtp = {
        description = "postmaster LMTP relay (postfix to dovecot, across dovecot reloads)";
        requires = [ "postmaster-lmtp.socket" ];
        after = [ "postmaster-lmtp.socket" ];
        # A new binary: the relay restarts, the socket keeps listening (deliveries
        # wait in it, none is refused). switch-to-configuration would otherwise stop
        # a socket-activated service together with its socket, and start the socket
        # again only after the old relay drained (up to 35 s of refused deliveries).
        stopIfChanged = false;
        serviceConfig = lmtpRelaySandbox // {
          ExecStart = "${lib.getExe' cfg.package "postmaster"} lmtp-relay --backend ${lmtpDovecotSocket}";
          # Lets the deliveries it serves finish on SIGTERM.
          TimeoutStopSec = "90s";
          Restart = "on-failure";
          RestartSec = "1s";
        };
      };

      # ---- TLS for IMAP, POP3 and ManageSieve: postmaster's front -------------------
      # As units/postmaster-tls.{socket,service} (tlsFrontUnit above says why).
      # One socket unit for all five ports (Accept=no): systemd passes every
      # listening socket to the one front process.
      systemd.sockets.postmaster-tls = {
        description = "postmaster TLS front sockets (IMAP, POP3, ManageSieve)";
        wantedBy = [ "sockets.target" ];
        listenStreams = map toString tlsFrontPorts;
        socketConfig = {
          # One long-lived front takes every connection.
          Backlog = 1024;
          NoDelay = true;
          KeepAlive = true;
          KeepAliveTimeSec = 300;
          KeepAliveIntervalSec = 30;
          KeepAliveProbes = 4;
          Service = tlsFrontUnit;
        };
      };
      systemd.services.postmaster-tls = {
        description = "postmaster TLS front (IMAP, POP3, ManageSieve to dovecot)";
        # Running from boot, not only from the first client: a pair it cannot
        # read shows in `postmaster status` and the journal at once.
        wantedBy = [ "multi-user.target" ];
        requires = [ "postmaster-tls.socket" ];
        after = [
          "postmaster-tls.socket"
          dovecotUnit
        ];
        # A new binary: the front restarts, the sockets keep listening (clients
        # wait in them, none is refused), as with the LMTP relay above.
        stopIfChanged = false;
        serviceConfig = tlsFrontSandbox // {
          ExecStart = "${lib.getExe' cfg.package "postmaster"} tls-front --pair ${tlsPair}";
          # SIGHUP: the pair read again (RELOADING=1 … READY=1), nothing dropped.
          Type = "notify-reload";
          Restart = "on-failure";
          RestartSec = "1s";
          # Two descriptors a client (its own, dovecot's), up to 1000 clients.
          LimitNOFILE = 8192;
        };
      };
    }

    (mkIf declared {
      systemd.services.postmaster-accounts = {
        description = "postmaster: write the accounts declared in services.postmaster.accounts";
        wantedBy = [ "multi-user.target" ];
        before = [
          "postmaster-setup.service"
          "postmaster.service"
        ];
        serviceConfig = hardening // {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = fillAccounts;
          LoadCredential = lib.mapAttrsToList (
            name: m: "${accountsLib.credentialName name}:${m.passwordHashFile}"
          ) cfg.accounts.mailboxes;
        };
      };
      # Wants, not Requires: when a rebuild runs the writer again, the daemon is not
      # restarted; it notices the new file itself and applies it.
      systemd.services.postmaster-setup = {
        wants = [ "postmaster-accounts.service" ];
        after = [ "postmaster-accounts.service" ];
      };
      systemd.services.postmaster = {
        wants = [ "postmaster-accounts.service" ];
        after = [ "postmaster-accounts.service" ];
      };
    })

    (mkIf rspamdNeeded {
      # rspamd signs what postfix hands its milter from submission and from the
      # host itself (main.cf: submission_milters, non_smtpd_milters) and checks
      # what arrives on port 25 (inbound_milters).
      services.rspamd = {
        enable = true;
        # Defining workers replaces nixpkgs' default set (normal, controller):
        # the controller stays (rspamc stat, the web interface); the proxy scans
        # by itself, so the normal worker is not needed, as with
        # services.rspamd.postfix.enable.
        # The controller on a socket in a directory of its own, as on Debian
        # (override.d/worker-controller.inc, from inboundLib.overrides, says the
        # same): nixpkgs' default, localhost:11334, would let any local user
        # teach rspamd or change its settings. The socket is the mail user's
        # group from the setgid directory already; naming it here keeps nixpkgs'
        # default (rspamd's own group) out, and changes nothing, which rspamd
        # may do without being in that group.
        workers.controller.bindSockets = [
          {
            socket = inboundLib.controllerSocket;
            mode = "0660";
            group = cfg.vmail.user;
          }
        ];
        workers.rspamd_proxy = {
          bindSockets = [
            {
              socket = milterSocket;
              mode = "0660";
              owner = rspamdCfg.user;
              group = postfixCfg.group;
            }
          ];
          # rspamd's own worker-proxy.inc hands the mail to a normal worker on
          # localhost:11333, which NixOS does not have: scan here instead.
          extraConfig = ''
            milter = yes;
            timeout = 120s;
            upstream "local" {
              default = yes;
              self_scan = yes;
            }
          '';
        };
        # The signing policy, as `postmaster render` writes it on Debian (also
        # with signing off: `enabled = false`); it includes the table of keys
        # the daemon keeps.
        locals = {
          "settings.conf".text = dkimLib.settingsConf { configFile = configPath; };
          "dkim_signing.conf".text = dkimLib.signingConf {
            configFile = configPath;
            # (null only with a failing assertion, which says so)
            hostName = toString cfg.hostName;
            inherit generatedDir;
            enabled = cfg.dkim.enable;
          };
        }
        # The checks of port 25, as `postmaster render` writes them (rendered
        # there whether or not they are on; here only when they are).
        // optionalAttrs cfg.inbound.enable (
          builtins.mapAttrs (_: text: { inherit text; }) (
            inboundLib.locals {
              configFile = configPath;
              inherit (cfg) domains;
              inherit (cfg.inbound) rejectScore addHeaderScore;
            }
          )
        )
        # rspamd's Bayes filter, as `postmaster render` writes it (its store here
        # is redis-rspamd's socket, below).
        // optionalAttrs cfg.inbound.enable (
          builtins.mapAttrs (_: text: { inherit text; }) (
            inboundLib.bayesLocals {
              configFile = configPath;
              inherit learning;
              # (the template without learning names no store)
              servers = if learning then toString bayesCfg.unixSocket else "";
            }
          )
        )
        # Whom rspamd asks about DNS ([inbound] resolver), as `postmaster render`
        # writes it: with "local", unbound below and nothing else.
        // builtins.mapAttrs (_: text: { inherit text; }) (
          inboundLib.resolverLocals {
            configFile = configPath;
            inherit (cfg.inbound) resolver;
          }
        );
        # Only loopback is local to rspamd: its default counts every private
        # network (10/8, 172.16/12, 192.168/16), whose mail on port 25 it would
        # neither check nor refuse to sign. Whether or not the checks are on.
        overrides = builtins.mapAttrs (_: text: { inherit text; }) (
          inboundLib.overrides { configFile = configPath; }
        );
      };

      systemd.services.rspamd = {
        # It reads the table of keys when it starts: the setup unit writes it first.
        wants = [ "postmaster-setup.service" ];
        after = [ "postmaster-setup.service" ];
        serviceConfig = {
          # The daemon reloads rspamd when the key a domain is signed with changes
          # (as Debian's rspamd.service, which has this).
          ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
          # To give the milter socket to postfix's group (nixpkgs' module does the
          # same with services.rspamd.postfix.enable).
          SupplementaryGroups = [ postfixCfg.group ];
          PrivateUsers = lib.mkForce false;
          # nixpkgs' unit has ProtectSystem=strict: the controller's socket
          # directory (made by tmpfiles below) is the one place outside
          # /run/rspamd it writes.
          ReadWritePaths = [ inboundLib.controllerDir ];
        };
      };
      # As tmpfiles.d/postmaster-learning.conf on Debian: rspamd makes the socket,
      # the mail user's group may reach it (IMAPSieve runs as that user), nobody
      # else may enter; setgid, so the socket is that group's from the start.
      systemd.tmpfiles.rules = [
        "d ${inboundLib.controllerDir} 2750 ${rspamdCfg.user} ${cfg.vmail.user} - -"
      ];
    })

    (mkIf learning {
      # Bayes' store: a Redis server for rspamd alone. Named servers listen on no
      # TCP port by default (port 0); the socket is 0660 in /run/redis-rspamd
      # (0750), both of the server's group, which rspamd joins below.
      services.redis.servers.rspamd.enable = true;
      systemd.services.rspamd = {
        wants = [ bayesUnit ];
        after = [ bayesUnit ];
        # PrivateUsers is off already (the milter socket's group, above).
        serviceConfig.SupplementaryGroups = [ bayesCfg.group ];
      };
      # The learning scripts and the programs they pipe to, at the paths the
      # IMAPSieve block (includeFiles above) names, as `postmaster render` writes
      # them on Debian; the programs run nixpkgs' rspamc. dovecot compiles the
      # scripts when it first runs them (2.4: into sieve_script_bin_path).
      environment.etc =
        builtins.mapAttrs
          (
            name: text:
            {
              inherit text;
            }
            // optionalAttrs (lib.hasPrefix "dovecot/sieve-pipe/" name) { mode = "0755"; }
          )
          (
            inboundLib.learningFiles {
              configFile = configPath;
              rspamc = "${rspamdCfg.package}/bin/rspamc";
            }
          );
    })

    (mkIf localResolver {
      # The checks' own resolver, as unbound/unbound.conf.d/postmaster.conf of
      # `postmaster render`: loopback only, from the root servers (no forwarder),
      # validating with nixpkgs' root trust anchor (enableRootTrustAnchor).
      services.unbound = {
        enable = true;
        # Only rspamd needs it; the host's own lookups keep their resolvers, so
        # that a stopped unbound defers mail on 25 and breaks nothing else.
        resolveLocalQueries = mkDefault false;
        settings.server = {
          interface = [ "127.0.0.1" ];
          access-control = [ "127.0.0.0/8 allow" ];
          prefetch = true;
          prefetch-key = true;
          qname-minimisation = true;
          hide-identity = true;
          hide-version = true;
        };
      };
      systemd.services.rspamd = {
        wants = [ resolverUnit ];
        after = [ resolverUnit ];
      };
    })

    (mkIf http01 {
      # Port 80, bound by systemd and handed to the daemon (Service=: systemd passes
      # the fd of every socket that triggers the service), which holds no
      # capability to bind it itself. As units/postmaster-acme.socket.
      systemd.sockets.postmaster-acme = {
        description = "postmaster ACME http-01 listener (port 80)";
        wantedBy = [ "sockets.target" ];
        listenStreams = [ "80" ];
        socketConfig = {
          FileDescriptorName = "acme-http";
          Service = "postmaster.service";
          Backlog = 512; # as units/postmaster-acme.socket
        };
      };
    })

    (mkIf (acmeCert != null) {
      systemd.services.postmaster = {
        wants = [ "acme-${cfg.tls.useACMEHost}.service" ];
        after = [ "acme-${cfg.tls.useACMEHost}.service" ];
      };
    })
  ]);
}
