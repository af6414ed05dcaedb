# Stub of nixpkgs' nixos/modules/services/mail/postfix.nix: its option
# declarations (names, types, defaults) and the parts of its configuration that
# services.postmaster relies on (settings.main.queue_directory, the users). Mirrors
# the newest NixOS/nixpkgs version at hand in June 2026 (git blob
# 0e738ab14de4f7efee2988260517dfcf081d8b7c, the module with its options sorted by
# name; not compared with the nixos-26.05 branch's).
# No freeform type but settings.main's: an option the real module lacks is an error
# here too.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) mkOption types;
  cfg = config.services.postfix;
  opt = type: default: mkOption { inherit type default; };
  lines = opt types.lines "";
  mapType = opt (types.enum [
    "hash"
    "regexp"
    "pcre"
  ]) "hash";
  masterService =
    { name, ... }:
    {
      options = {
        args = opt (types.listOf types.str) [ ];
        chroot = mkOption { type = types.bool; };
        command = opt types.str name;
        maxproc = mkOption { type = types.int; };
        name = opt types.str name;
        private = mkOption { type = types.bool; };
        privileged = mkOption { type = types.bool; };
        rawEntry = opt (types.listOf types.str) [ ];
        type = opt (types.enum [
          "inet"
          "unix"
          "unix-dgram"
          "fifo"
          "pass"
        ]) "unix";
        wakeup = mkOption { type = types.int; };
        wakeupUnusedComponent = mkOption { type = types.bool; };
      };
    };
  removed = name: lib.mkRemovedOptionModule [ "services" "postfix" name ] "";
  renamed =
    from: to:
    lib.mkRenamedOptionModule [ "services" "postfix" from ] (
      [
        "services"
        "postfix"
      ]
      ++ to
    );
in
{
  imports =
    map removed [
      "sslCACert"
      "sslCert"
      "sslKey"
      "lookupMX"
      "relayHost"
      "relayPort"
      "extraConfig"
    ]
    ++ lib.mapAttrsToList renamed {
      networks = [
        "settings"
        "main"
        "mynetworks"
      ];
      networksStyle = [
        "settings"
        "main"
        "mynetworks_style"
      ];
      hostname = [
        "settings"
        "main"
        "myhostname"
      ];
      domain = [
        "settings"
        "main"
        "mydomain"
      ];
      origin = [
        "settings"
        "main"
        "myorigin"
      ];
      destination = [
        "settings"
        "main"
        "mydestination"
      ];
      relayDomains = [
        "settings"
        "main"
        "relay_domains"
      ];
      recipientDelimiter = [
        "settings"
        "main"
        "recipient_delimiter"
      ];
      tlsTrustedAuthorities = [
        "settings"
        "main"
        "smtp_tls_CAfile"
      ];
      config = [
        "settings"
        "main"
      ];
      masterConfig = [
        "settings"
        "master"
      ];
    }
    ++ [
      (lib.mkChangedOptionModule
        [ "services" "postfix" "useDane" ]
        [ "services" "postfix" "settings" "main" "smtp_tls_security_level" ]
        (c: lib.mkIf c.services.postfix.useDane "dane")
      )
      (lib.mkRenamedOptionModule [ "services" "postfix" "useSrs" ] [ "services" "pfix-srsd" "enable" ])
    ];

  options.services.postfix = {
    enable = opt types.bool false;
    package = lib.mkPackageOption pkgs "postfix" { };
    aliasFiles = opt (types.attrsOf types.path) { };
    aliasMapType = mapType;
    canonical = lines;
    dnsBlacklistOverrides = lines;
    dnsBlacklists = opt (types.listOf types.str) [ ];
    enableHeaderChecks = opt types.bool false;
    enableSmtp = opt types.bool true;
    enableSubmission = opt types.bool false;
    enableSubmissions = opt types.bool false;
    extraAliases = lines;
    extraHeaderChecks = lines;
    extraMasterConf = lines;
    group = opt types.str "postfix";
    headerChecks = opt (types.listOf (
      types.submodule {
        options.action = opt types.str "DUNNO";
        options.pattern = opt types.str "/^.*/";
      }
    )) [ ];
    localRecipients = opt (types.nullOr (types.listOf types.str)) null;
    mapFiles = opt (types.attrsOf types.path) { };
    postmasterAlias = opt types.str "root";
    rootAlias = opt types.str "";
    setSendmail = opt types.bool true;
    setgidGroup = opt types.str "postdrop";
    settings.main = mkOption {
      type = types.submodule {
        options = {
          message_size_limit = opt (types.nullOr types.int) 10240000;
          mydestination =
            opt
              (types.nullOr (
                types.oneOf [
                  types.str
                  (types.listOf types.str)
                ]
              ))
              [
                "$myhostname"
                "localhost.$mydomain"
                "localhost"
              ];
          myhostname = opt (types.nullOr types.str) null;
          mynetworks = opt (types.nullOr (types.listOf types.str)) null;
          mynetworks_style = opt (types.nullOr (
            types.enum [
              "host"
              "subnet"
              "class"
            ]
          )) "host";
          recipient_delimiter = opt (types.nullOr types.str) "";
          relay_domains = opt (types.nullOr (types.listOf types.str)) [ ];
          relayhost = opt (types.nullOr (types.listOf types.str)) [ ];
          smtp_tls_CAfile = opt types.path config.security.pki.caBundle;
          smtp_tls_security_level = opt (types.enum [
            "none"
            "may"
            "encrypt"
            "dane"
            "dane-only"
            "fingerprint"
            "verify"
            "secure"
          ]) "may";
          smtpd_tls_chain_files = opt (types.listOf types.path) [ ];
          smtpd_tls_security_level = opt (types.enum [
            "none"
            "may"
            "encrypt"
          ]) (if cfg.settings.main.smtpd_tls_chain_files != [ ] then "may" else "none");
        };
        freeformType = types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.bool
              types.int
              types.path
              types.str
              (types.listOf types.str)
            ]
          )
        );
      };
    };
    settings.master = opt (types.attrsOf (types.submodule masterService)) { };
    submissionOptions = opt (types.attrsOf types.str) {
      milter_macro_daemon_name = "ORIGINATING";
      smtpd_client_restrictions = "permit_sasl_authenticated,reject";
      smtpd_sasl_auth_enable = "yes";
      smtpd_tls_security_level = "encrypt";
    };
    submissionsOptions = opt (types.attrsOf types.str) {
      milter_macro_daemon_name = "ORIGINATING";
      smtpd_client_restrictions = "permit_sasl_authenticated,reject";
      smtpd_sasl_auth_enable = "yes";
    };
    transport = lines;
    user = opt types.str "postfix";
    virtual = lines;
    virtualMapType = mapType;
  };

  # What services.postmaster reads of it, and what it defines elsewhere.
  config = lib.mkIf cfg.enable {
    services.postfix.settings.main = lib.mapAttrs (_: lib.mkDefault) {
      compatibility_level = cfg.package.version;
      data_directory = "/var/lib/postfix/data";
      mail_owner = cfg.user;
      queue_directory = "/var/lib/postfix/queue";
      setgid_group = cfg.setgidGroup;
    };
    services.mail.sendmailSetuidWrapper = lib.mkIf cfg.setSendmail {
      program = "sendmail";
      source = lib.getExe' cfg.package "sendmail";
    };
    environment.systemPackages = [ cfg.package ];
    systemd.services.postfix = {
      after = [
        "network.target"
        "postfix-setup.service"
      ];
      requires = [ "postfix-setup.service" ];
      wantedBy = [ "multi-user.target" ];
    };
    users.users = lib.optionalAttrs (cfg.user == "postfix") { postfix.group = cfg.group; };
    users.groups = lib.optionalAttrs (cfg.group == "postfix") { postfix = { }; };
  };
}
