# Stub of nixpkgs' nixos/modules/services/databases/redis.nix: its option
# declarations (names, types, defaults) and the parts of its configuration that
# services.postmaster relies on (a named server's socket, user and group, its
# settings, its unit redis-<name>.service). Mirrors the newest NixOS/nixpkgs
# version the project's search index holds in December 2026 (options sorted by
# name, Sentinel options, extraParams, group; git blob
# 172d95a8a9a6869a3cc6583f555508f05b43bb09, its commit not known), which
# tests/nix-checks.sh compares with a real file when one is given
# (POSTMASTER_NIXPKGS_MODULES: <generation>/nixos/modules/services/databases/redis.nix).
# No freeform type: an option the real module lacks is an error here too.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) mkOption types;
  cfg = config.services.redis;
  opt = type: default: mkOption { inherit type default; };
  redisName = name: "redis" + lib.optionalString (name != "") ("-" + name);
  enabledServers = lib.filterAttrs (_: conf: conf.enable) cfg.servers;
  base = [
    "services"
    "redis"
  ];
  removed = name: lib.mkRemovedOptionModule (base ++ [ name ]) "";
  renamed =
    name:
    lib.mkRenamedOptionModule (base ++ [ name ]) (
      base
      ++ [
        "servers"
        ""
        name
      ]
    );
in
{
  imports =
    map removed [
      "user"
      "dbpath"
      "dbFilename"
      "appendOnlyFilename"
      "pidFile"
      "extraConfig"
    ]
    ++ map renamed [
      "enable"
      "port"
      "openFirewall"
      "bind"
      "unixSocket"
      "unixSocketPerm"
      "logLevel"
      "logfile"
      "syslog"
      "databases"
      "maxclients"
      "save"
      "slaveOf"
      "masterAuth"
      "requirePass"
      "requirePassFile"
      "appendOnly"
      "appendFsync"
      "slowLogLogSlowerThan"
      "slowLogMaxLen"
      "settings"
    ];

  options.services.redis = {
    package = lib.mkPackageOption pkgs "redis" { };
    servers = opt (types.attrsOf (
      types.submodule (
        { config, name, ... }:
        {
          options = {
            enable = lib.mkEnableOption "Redis server";
            appendFsync = opt types.str "everysec";
            appendOnly = opt types.bool false;
            bind = opt (types.nullOr types.str) "127.0.0.1";
            databases = opt types.int 16;
            extraParams = opt (types.listOf types.str) [ ];
            group = opt types.str config.user;
            logLevel = opt types.str "notice";
            logfile = opt types.str "/dev/null";
            masterAuth = opt (types.nullOr types.str) null;
            masterAuthFile = opt (types.nullOr types.path) null;
            masterUser = opt (types.nullOr types.str) null;
            maxclients = opt types.int 10000;
            openFirewall = opt types.bool false;
            port = opt types.port (if name == "" then 6379 else 0);
            requirePass = opt (types.nullOr types.str) null;
            requirePassFile = opt (types.nullOr types.path) null;
            save = opt (types.listOf (types.listOf types.int)) [
              [
                900
                1
              ]
              [
                300
                10
              ]
              [
                60
                10000
              ]
            ];
            sentinelAuthPassFile = opt (types.nullOr types.path) null;
            sentinelAuthUser = opt (types.nullOr types.str) null;
            sentinelMasterHost = opt (types.nullOr types.str) null;
            sentinelMasterName = opt (types.nullOr types.str) null;
            sentinelMasterPort = opt (types.nullOr types.int) null;
            sentinelMasterQuorum = opt (types.nullOr types.int) null;
            settings = opt (types.attrsOf (
              types.oneOf [
                types.bool
                types.int
                types.str
                (types.listOf types.str)
              ]
            )) { };
            slaveOf = opt (types.nullOr (
              types.submodule {
                options = {
                  ip = mkOption { type = types.str; };
                  port = opt types.port 6379;
                };
              }
            )) null;
            slowLogLogSlowerThan = opt types.int 10000;
            slowLogMaxLen = opt types.int 128;
            syslog = opt types.bool true;
            unixSocket = opt (types.nullOr types.path) "/run/${redisName name}/redis.sock";
            unixSocketPerm = opt types.int 660;
            user = opt types.str (redisName name);
          };
          # What the server is told (redis.conf), as far as postmaster looks.
          config.settings = lib.mkMerge [
            {
              inherit (config) port;
            }
            (lib.mkIf (config.bind != null) { inherit (config) bind; })
            (lib.mkIf (config.unixSocket != null) {
              unixsocket = config.unixSocket;
              unixsocketperm = toString config.unixSocketPerm;
            })
            (lib.mkIf (config.requirePass != null) { requirepass = config.requirePass; })
          ];
        }
      )
    )) { };
    vmOverCommit = lib.mkEnableOption "set `vm.overcommit_memory` sysctl to 1" // {
      default = true;
    };
  };

  config = lib.mkIf (enabledServers != { }) {
    systemd.services = lib.mapAttrs' (
      name: conf:
      lib.nameValuePair (redisName name) {
        after = [ "network.target" ];
        wantedBy = [ "multi-user.target" ];
        serviceConfig = {
          ExecStart = "${cfg.package}/bin/redis-server /var/lib/${redisName name}/redis.conf";
          Type = "notify";
          User = conf.user;
          Group = conf.group;
          PrivateUsers = true;
          ProtectSystem = "strict";
          RuntimeDirectory = redisName name;
          RuntimeDirectoryMode = "0750";
          StateDirectory = redisName name;
          StateDirectoryMode = "0700";
          UMask = "0077";
        };
      }
    ) enabledServers;
    users.groups = lib.mapAttrs' (name: _: lib.nameValuePair (redisName name) { }) (
      lib.filterAttrs (name: conf: conf.group == redisName name) enabledServers
    );
    users.users = lib.mapAttrs' (
      name: conf:
      lib.nameValuePair (redisName name) {
        description = "System user for the redis-server instance ${name}";
        inherit (conf) group;
        isSystemUser = true;
      }
    ) (lib.filterAttrs (name: conf: conf.user == redisName name) enabledServers);
  };
}
