# Stub of nixpkgs' nixos/modules/services/networking/unbound.nix: its option
# declarations (names, types, defaults) and the parts of its configuration that
# services.postmaster relies on (the server settings it defaults, the unit, the
# user). Mirrors the newest version the project's search index holds (the module
# with settings as a freeform submodule, package unbound-with-systemd,
# lib.boolToYesNo; git blob 3126e6827799b917010e7cc8bb01fae8b3f36bca, its nixpkgs
# commit not known). The opt-in evaluation against
# nixpkgs' real modules uses the real file instead when a generation has it
# (<generation>/nixos/modules/services/networking/unbound.nix), and compares its
# options with these (one difference: the real module turns allowedAccess into
# access-control with mkChangedOptionModule, which declares the same option).
# No freeform type but settings': an option the real module lacks is an error here
# too.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) mkOption types;
  cfg = config.services.unbound;
  opt = type: default: mkOption { inherit type default; };
  primitive = types.oneOf [
    types.int
    types.str
    types.bool
    types.float
  ];
  value = types.oneOf [
    primitive
    (types.listOf primitive)
  ];
  section = types.oneOf [
    types.str
    (types.attrsOf value)
  ];
in
{
  imports = [
    (lib.mkRenamedOptionModule
      [ "services" "unbound" "interfaces" ]
      [ "services" "unbound" "settings" "server" "interface" ]
    )
    (lib.mkRemovedOptionModule [ "services" "unbound" "allowedAccess" ] "")
    (lib.mkRemovedOptionModule [ "services" "unbound" "forwardAddresses" ] "")
    (lib.mkRemovedOptionModule [ "services" "unbound" "extraConfig" ] "")
  ];

  options.services.unbound = {
    enable = opt types.bool false;
    package = lib.mkPackageOption pkgs "unbound-with-systemd" { };
    checkconf = opt types.bool (!cfg.settings ? include && !cfg.settings ? remote-control);
    enableRootTrustAnchor = opt types.bool true;
    group = opt types.str "unbound";
    localControlSocketPath = opt (types.nullOr types.str) null;
    resolveLocalQueries = opt types.bool true;
    settings = opt (types.submodule {
      options.remote-control.control-enable = mkOption {
        type = types.bool;
        default = false;
        internal = true;
      };
      # Named, as nixpkgs names it (its description is the option's type).
      freeformType =
        types.attrsOf (
          types.oneOf [
            section
            (types.listOf section)
          ]
        )
        // {
          description = ''
            unbound.conf configuration type. The format consist of an attribute
            set of settings. Each settings can be either one value, a list of
            values or an attribute set. The allowed values are integers,
            strings, booleans or floats.
          '';
        };
    }) { };
    stateDir = opt types.path "/var/lib/unbound";
    user = opt types.str "unbound";
  };

  config = lib.mkIf cfg.enable {
    environment.systemPackages = [ cfg.package ];
    networking = lib.mkIf cfg.resolveLocalQueries {
      resolvconf.useLocalResolver = lib.mkDefault true;
    };
    services.unbound.settings.server = {
      access-control = lib.mkDefault [
        "127.0.0.0/8 allow"
        "::1/128 allow"
      ];
      auto-trust-anchor-file = lib.mkIf cfg.enableRootTrustAnchor "${cfg.stateDir}/root.key";
      interface = lib.mkDefault [
        "127.0.0.1"
        "::1"
      ];
    };
    systemd.services.unbound = {
      before = [ "nss-lookup.target" ];
      wantedBy = [
        "multi-user.target"
        "nss-lookup.target"
      ];
      serviceConfig = {
        Type = "notify";
        User = cfg.user;
        Group = cfg.group;
      };
    };
    users.groups = lib.mkIf (cfg.group == "unbound") { unbound = { }; };
    users.users = lib.mkIf (cfg.user == "unbound") {
      unbound = {
        group = cfg.group;
        isSystemUser = true;
      };
    };
  };
}
