# What the two generations of nixpkgs' dovecot module (dovecot-500271.nix,
# dovecot-unstable.nix) declare alike: the value type of services.dovecot2.settings
# (a "type name" key is a section whose _section.type and .name default to the
# key's two words), the options both keep, the options both removed or renamed,
# and the parts of their configuration services.postmaster relies on.
{ lib }:

let
  inherit (lib) mkOption types;
  opt = type: default: mkOption { inherit type default; };

  # fixed: _section is read-only (the sections the newer module declares itself).
  sectionModule =
    fixed:
    { name, options, ... }:
    let
      # An element of a list (`service = [ { … } ]`) takes the list's key.
      key =
        if builtins.match "[[]definition .*].*" name == null then
          name
        else
          lib.last (lib.dropEnd 3 options._module.args.loc);
      words = builtins.match "([^ ]+) (.+)" key;
    in
    {
      options._section = {
        type = mkOption {
          type = types.nonEmptyStr;
          default = if words == null then key else builtins.elemAt words 0;
          readOnly = fixed;
        };
        name = mkOption {
          type = types.nullOr types.nonEmptyStr;
          default = if words == null then null else builtins.elemAt words 1;
          readOnly = fixed;
        };
      };
      freeformType = types.attrsOf valueType;
    };
  primitive = types.oneOf [
    types.int
    types.str
    types.bool
    types.path
    (types.submodule (sectionModule false))
  ];
  # Named, as nixpkgs names it: its description would otherwise contain itself
  # (a section's freeform type is made of valueType) and never end.
  valueType =
    types.nullOr (
      types.oneOf [
        primitive
        (types.nonEmptyListOf primitive)
      ]
    )
    // {
      description = "Dovecot config value";
    };

  pluginList = types.submodule { options.enable = opt (types.listOf types.str) [ ]; };
in
{
  inherit sectionModule valueType opt;

  fixedSectionWith =
    extra:
    types.submodule [
      (sectionModule true)
      extra
    ];

  # The options both generations declare (besides settings).
  options =
    { pkgs, config }:
    {
      enable = opt types.bool false;
      package = lib.mkPackageOption pkgs "dovecot" { } // {
        default =
          if lib.versionAtLeast config.system.stateVersion "26.05" then pkgs.dovecot else pkgs.dovecot_2_3;
      };
      mailPlugins =
        opt
          (types.submodule {
            options.globally = opt pluginList { enable = [ ]; };
            options.perProtocol = opt (types.attrsOf pluginList) { };
          })
          {
            globally.enable = [ ];
            perProtocol = { };
          };
      configFile = opt (types.nullOr types.path) null;
      includeFiles = opt (types.listOf types.path) [ ];
      createMailUser = opt types.bool true;
      showPAMFailure = opt types.bool false;
      imapsieve.mailbox = opt (types.listOf (
        types.submodule {
          options = {
            name = mkOption { type = types.str; };
            from = opt (types.nullOr types.str) null;
            causes = opt (types.listOf (
              types.enum [
                "APPEND"
                "COPY"
                "FLAG"
              ]
            )) [ ];
            before = opt (types.nullOr types.path) null;
            after = opt (types.nullOr types.path) null;
          };
        }
      )) [ ];
      sieve = {
        extensions = opt (types.listOf types.str) [ ];
        globalExtensions = opt (types.listOf types.str) [ ];
        scripts = opt (types.attrsOf types.path) { };
        pipeBins = opt (types.listOf types.path) [ ];
      };
    };

  imports =
    let
      base = [
        "services"
        "dovecot2"
      ];
      removed = name: lib.mkRemovedOptionModule (base ++ [ name ]) "";
      renamed = from: to: lib.mkRenamedOptionModule (base ++ [ from ]) (base ++ to);
    in
    map removed [
      "modules"
      "enablePop3"
      "enableImap"
      "enableLmtp"
      "sslServerCert"
      "sslServerKey"
      "sslCACert"
      "mailLocation"
      "enableDHE"
      "extraConfig"
      "mailboxes"
      "pluginSettings"
      "enableQuota"
      "quotaPort"
      "quotaGlobalPerUser"
    ]
    ++ [
      (renamed "sieveScripts" [
        "sieve"
        "scripts"
      ])
      (renamed "mailUser" [
        "settings"
        "mail_uid"
      ])
      (renamed "mailGroup" [
        "settings"
        "mail_gid"
      ])
      (renamed "protocols" [
        "settings"
        "protocols"
      ])
    ];

  # The configuration both define that services.postmaster relies on: the users
  # (the internal user's primary group is what dovecot's auth process runs with),
  # the unit's name, the config file in /etc, Dovecot 2.4's two version settings.
  config =
    {
      config,
      cfg,
      internalUser,
      internalGroup,
      pkgs,
    }:
    let
      isPre24 = lib.versionOlder cfg.package.version "2.4";
    in
    {
      users.users = {
        dovenull.group = "dovenull";
      }
      // lib.optionalAttrs (internalUser == "dovecot2") {
        dovecot2 = {
          description = "Dovecot user";
          group = internalGroup;
        };
      };
      users.groups = {
        dovenull = { };
      }
      // lib.optionalAttrs (internalGroup == "dovecot2") { dovecot2 = { }; };
      environment.etc."dovecot/dovecot.conf".source =
        pkgs.writeText "dovecot.conf" "(not rendered by the stub)";
      environment.systemPackages = [ cfg.package ];
      systemd.services.dovecot = {
        after = [ "network.target" ];
        wantedBy = [ "multi-user.target" ];
      };
      assertions = [
        {
          assertion = isPre24 || cfg.settings.dovecot_config_version or null != null;
          message = "services.dovecot2: Since Dovecot 2.4, the option 'services.dovecot2.settings.dovecot_config_version' must be explicitly set.";
        }
        {
          assertion = isPre24 || cfg.settings.dovecot_storage_version or null != null;
          message = "services.dovecot2: Since Dovecot 2.4, the option 'services.dovecot2.settings.dovecot_storage_version' must be explicitly set.";
        }
        {
          assertion = !(config.systemd.services ? dovecot2);
          message = "Your configuration sets options on the `dovecot2` systemd service.";
        }
      ];
      warnings = lib.optional isPre24 "While Dovecot 2.3 is not yet deprecated or EOL, there is a newer version available in Nixpkgs (Dovecot 2.4).";
    };
}
