# Stub of nixpkgs' nixos/modules/services/mail/rspamd.nix: its option
# declarations (names, types, defaults) and the parts of its configuration that
# services.postmaster relies on: the worker sections of rspamd.conf (bind_socket
# from bindSockets, worker-<name>.inc overrides from extraConfig), local.d files
# from locals, the unit's user, group, SupplementaryGroups and PrivateUsers, and
# the user and group. Mirrors the newest NixOS/nixpkgs version at hand in June
# 2026 (git blob 2e5f6f26c3605dc2e7f941d1cd4e965154ea558e: the module with
# extraArgs and its options sorted by name; not compared with the nixos-26.05
# branch's). Its older form (git blob 034988b920ef372215e291335152bec3a591aff5,
# no extraArgs) declares the same options otherwise. The real file's traceWarning
# string holds two ESC characters (a colour): a copy through a text view that drops
# control characters is 11 bytes short, so check a copy's blob id.
# No freeform type: an option the real module lacks is an error here too.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) mkOption types;
  cfg = config.services.rspamd;
  postfixCfg = config.services.postfix;
  opt = type: default: mkOption { inherit type default; };

  bindSocketOpts =
    { config, options, ... }:
    {
      options = {
        group = opt types.str cfg.group;
        mode = opt types.str "0644";
        owner = opt types.str cfg.user;
        rawEntry = mkOption {
          type = types.str;
          internal = true;
        };
        socket = mkOption { type = types.str; };
      };
      # Mode, owner and group only where defined, and only for unix sockets.
      config.rawEntry =
        let
          maybe = o: lib.optionalString options.${o}.isDefined " ${o}=${config.${o}}";
        in
        if lib.hasPrefix "/" config.socket then
          "${config.socket}${maybe "mode"}${maybe "owner"}${maybe "group"}"
        else
          config.socket;
    };

  isUnixSocket = s: lib.hasPrefix "/" (if builtins.isString s then s else s.socket);

  workerOpts =
    { name, ... }:
    {
      options = {
        enable = opt (types.nullOr types.bool) null;
        bindSockets = mkOption {
          type = types.listOf (types.either types.str (types.submodule bindSocketOpts));
          default = [ ];
          # A string becomes a socket of its own, with the defaults' mode.
          apply = map (
            each:
            if !builtins.isString each then
              each
            else if isUnixSocket each then
              {
                group = cfg.group;
                mode = "0644";
                owner = cfg.user;
                rawEntry = each;
                socket = each;
              }
            else
              {
                rawEntry = each;
                socket = each;
              }
          );
        };
        count = opt (types.nullOr types.int) null;
        extraConfig = opt types.lines "";
        includes = opt (types.listOf types.str) [ ];
        name = opt (types.nullOr types.str) name;
        type = mkOption {
          type = types.nullOr (
            types.enum [
              "normal"
              "controller"
              "fuzzy"
              "rspamd_proxy"
              "lua"
              "proxy"
            ]
          );
          apply = x: if x == "proxy" then "rspamd_proxy" else x;
        };
      };
      config =
        lib.mkIf
          (builtins.elem name [
            "normal"
            "controller"
            "fuzzy"
            "rspamd_proxy"
          ])
          {
            bindSockets =
              let
                unixSocket = n: {
                  group = cfg.group;
                  mode = "0660";
                  owner = cfg.user;
                  socket = "/run/rspamd/${n}.sock";
                };
              in
              lib.mkDefault (
                {
                  normal = [ (unixSocket "rspamd") ];
                  controller = [ "localhost:11334" ];
                  rspamd_proxy = [ (unixSocket "proxy") ];
                }
                .${name} or [ ]
              );
            includes = lib.mkDefault [
              "$CONFDIR/worker-${if name == "rspamd_proxy" then "proxy" else name}.inc"
            ];
            type = lib.mkDefault name;
          };
    };

  configFileModule =
    prefix:
    { config, name, ... }:
    {
      options = {
        enable = opt types.bool true;
        source = mkOption { type = types.path; };
        text = opt (types.nullOr types.lines) null;
      };
      config.source = lib.mkIf (config.text != null) (
        lib.mkDefault (pkgs.writeText "rspamd-${prefix}-${baseNameOf name}" config.text)
      );
    };

  includeName = name: if name == "rspamd_proxy" then "proxy" else name;
  # The worker sections of rspamd.conf (the rest of it is rspamd's own).
  rspamdConfFile = pkgs.writeText "rspamd.conf" (
    lib.concatStrings (
      lib.mapAttrsToList (name: w: ''
        worker "${w.type}" {
          type = "${w.type}";
          ${lib.optionalString (w.enable != null) "enabled = ${lib.boolToYesNo w.enable};"}
          ${lib.concatMapStringsSep "\n  " (s: ''bind_socket = "${s.rawEntry}";'') w.bindSockets}
          ${lib.optionalString (w.count != null) "count = ${toString w.count};"}
          ${lib.concatMapStringsSep "\n  " (i: ''.include "${i}"'') w.includes}
          .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/worker-${includeName name}.inc"
          .include(try=${
            lib.boolToString (w.extraConfig == "")
          }; priority=10) "$LOCAL_CONFDIR/override.d/worker-${includeName name}.inc"
        }
      '') cfg.workers
    )
  );
  files =
    dir: set:
    lib.mapAttrsToList (name: f: {
      name = "${dir}/${name}";
      path = f.source;
    }) (lib.filterAttrs (_: f: f.enable) set);
in
{
  imports = [
    (lib.mkRemovedOptionModule [ "services" "rspamd" "socketActivation" ] "")
    (lib.mkRenamedOptionModule
      [ "services" "rspamd" "bindSocket" ]
      [ "services" "rspamd" "workers" "normal" "bindSockets" ]
    )
    (lib.mkRenamedOptionModule
      [ "services" "rspamd" "bindUISocket" ]
      [ "services" "rspamd" "workers" "controller" "bindSockets" ]
    )
    (lib.mkRemovedOptionModule [ "services" "rmilter" ] "")
  ];

  options.services.rspamd = {
    enable = opt types.bool false;
    package = lib.mkPackageOption pkgs "rspamd" { };
    debug = opt types.bool false;
    extraArgs = opt (types.listOf types.str) [ ];
    extraConfig = opt types.lines "";
    group = opt types.str "rspamd";
    localLuaRules = opt (types.nullOr types.path) null;
    locals = opt (types.attrsOf (types.submodule (configFileModule "locals"))) { };
    overrides = opt (types.attrsOf (types.submodule (configFileModule "overrides"))) { };
    postfix = {
      config =
        opt
          (types.attrsOf (
            types.oneOf [
              types.bool
              types.str
              (types.listOf types.str)
            ]
          ))
          {
            non_smtpd_milters = [ "unix:/run/rspamd/rspamd-milter.sock" ];
            smtpd_milters = [ "unix:/run/rspamd/rspamd-milter.sock" ];
          };
      enable = opt types.bool false;
    };
    user = opt types.str "rspamd";
    workers = opt (types.attrsOf (types.submodule workerOpts)) {
      controller = { };
      normal = { };
    };
  };

  config = lib.mkIf cfg.enable {
    environment.etc.rspamd.source = pkgs.linkFarm "etc-rspamd-dir" (
      files "local.d" cfg.locals
      ++ files "override.d" cfg.overrides
      ++ [
        {
          name = "rspamd.conf";
          path = rspamdConfFile;
        }
      ]
    );
    environment.systemPackages = [ cfg.package ];
    services.postfix.settings.main = lib.mkIf cfg.postfix.enable cfg.postfix.config;
    services.rspamd.overrides = lib.mapAttrs' (
      n: w: lib.nameValuePair "worker-${includeName n}.inc" { text = w.extraConfig; }
    ) (lib.filterAttrs (_: w: w.extraConfig != "") cfg.workers);
    services.rspamd.workers = lib.mkIf cfg.postfix.enable {
      controller = { };
      rspamd_proxy = {
        bindSockets = [
          {
            group = postfixCfg.group;
            mode = "0660";
            owner = cfg.user;
            socket = "/run/rspamd/rspamd-milter.sock";
          }
        ];
        extraConfig = ''
          upstream "local" {
            default = yes;
            self_scan = yes;
          }
        '';
      };
    };
    systemd.services.postfix = lib.mkIf cfg.postfix.enable {
      serviceConfig.SupplementaryGroups = [ postfixCfg.group ];
    };
    systemd.services.rspamd = {
      after = [ "network.target" ];
      wantedBy = [ "multi-user.target" ];
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/rspamd -c /etc/rspamd/rspamd.conf -f";
        Group = cfg.group;
        PrivateUsers = !cfg.postfix.enable;
        ProtectSystem = "strict";
        RuntimeDirectory = "rspamd";
        RuntimeDirectoryMode = "0755";
        SupplementaryGroups = lib.mkIf cfg.postfix.enable [ postfixCfg.group ];
        User = cfg.user;
      };
    };
    users.groups.${cfg.group}.gid = config.ids.gids.rspamd;
    users.users.${cfg.user} = {
      description = "rspamd daemon";
      group = cfg.group;
      uid = config.ids.uids.rspamd;
    };
  };
}
