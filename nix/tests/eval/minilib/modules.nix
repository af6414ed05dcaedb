# minilib's module system (see default.nix): evalModules, and the modules that
# keep renamed, removed and changed options answering.
#
# How it evaluates, as nixpkgs' lib does where the project's checks can tell:
# - Modules are paths, functions or attribute sets; a function gets lib, config,
#   options, specialArgs and whatever else it names from config._module.args.
#   Imports are followed breadth-first, a path only once, and definitions are
#   taken in the reverse of that order (this is what orders merged lists).
# - A definition's mkIf, mkMerge and mkOverride are pushed down to the options
#   without evaluating any condition; at an option, conditions are evaluated,
#   only the definitions of the highest priority (lowest number) are kept, those
#   with mkOrder sorted, each is type-checked, and the type merges them.
# - A definition for an option nobody declared is an error naming it, unless the
#   module set has a freeform type, which then takes it.
# - config is a fixed point: modules read the merged values of each other.
lib:

let
  inherit (builtins)
    all
    any
    attrNames
    concatLists
    concatMap
    concatStringsSep
    filter
    foldl'
    functionArgs
    genericClosure
    head
    isAttrs
    isBool
    isFunction
    isList
    length
    mapAttrs
    removeAttrs
    sort
    typeOf
    zipAttrsWith
    ;
  inherit (lib)
    defaultOrderPriority
    defaultOverridePriority
    getAttrFromPath
    imap1
    isOption
    mapAttrsRecursiveCond
    mapAttrsToList
    mkIf
    mkMerge
    mkOption
    mkOptionDefault
    mkOverride
    optional
    optionalAttrs
    recursiveUpdate
    reverseList
    setAttrByPath
    showDefs
    showFiles
    showOption
    ;

  # mkMerge [ a (mkIf c b) ] → [ a, b's attributes each under mkIf c ]: the
  # attribute names are known without evaluating c.
  pushDownProperties =
    let
      each = f: v: if isAttrs v then mapAttrs (_: f) v else v;
    in
    cfg:
    if cfg._type or "" == "merge" then
      concatMap pushDownProperties cfg.contents
    else if cfg._type or "" == "if" then
      map (each (mkIf cfg.condition)) (pushDownProperties cfg.content)
    else if cfg._type or "" == "override" then
      map (each (mkOverride cfg.priority)) (pushDownProperties cfg.content)
    else
      [ cfg ];

  # At an option: mkMerge flattened, mkIf decided.
  dischargeProperties =
    def:
    if def._type or "" == "merge" then
      concatMap dischargeProperties def.contents
    else if def._type or "" == "if" then
      if isBool def.condition then
        if def.condition then dischargeProperties def.content else [ ]
      else
        throw "‘mkIf’ called with a non-Boolean condition"
    else
      [ def ];

  filterOverrides =
    defs:
    let
      prio =
        def: if def.value._type or "" == "override" then def.value.priority else defaultOverridePriority;
      highestPrio = foldl' (p: def: if prio def < p then prio def else p) 9999 defs;
    in
    {
      inherit highestPrio;
      values = concatMap (
        def:
        if prio def != highestPrio then
          [ ]
        else if def.value._type or "" == "override" then
          [ (def // { value = def.value.content; }) ]
        else
          [ def ]
      ) defs;
    };

  # builtins.sort is stable: definitions of one order keep theirs.
  sortProperties =
    defs:
    let
      strip =
        def:
        if def.value._type or "" == "order" then
          def
          // {
            value = def.value.content;
            inherit (def.value) priority;
          }
        else
          def;
    in
    sort (a: b: (a.priority or defaultOrderPriority) < (b.priority or defaultOrderPriority)) (
      map strip defs
    );

  mergeDefinitions = loc: type: defs: rec {
    defsFinal' =
      let
        normalized = concatMap (
          m:
          map
            (value: {
              inherit (m) file;
              inherit value;
            })
            (
              builtins.addErrorContext "while evaluating definitions from `${m.file}':" (
                dischargeProperties m.value
              )
            )
        ) defs;
        filtered = filterOverrides normalized;
      in
      {
        inherit (filtered) highestPrio;
        values =
          if any (def: def.value._type or "" == "order") filtered.values then
            sortProperties filtered.values
          else
            filtered.values;
      };
    defsFinal = defsFinal'.values;
    isDefined = defsFinal != [ ];
    mergedValue =
      if isDefined then
        if all (def: type.check def.value) defsFinal then
          type.merge loc defsFinal
        else
          throw "A definition for option `${showOption loc}' is not of type `${type.description}'. Definition values:${
            showDefs (filter (def: !type.check def.value) defsFinal)
          }"
      else if type.emptyValue ? value then
        type.emptyValue.value
      else
        throw "The option `${showOption loc}' was accessed but has no value defined. Try setting the option.";
    optionalValue = if isDefined then { value = mergedValue; } else { };
  };

  evalOptionValue =
    loc: opt: defs:
    let
      defs' =
        optional (opt ? default) {
          file = head opt.declarations;
          value = mkOptionDefault opt.default;
        }
        ++ defs;
      res =
        if opt.readOnly or false && length defs' > 1 then
          throw "The option `${showOption loc}' is read-only, but it's set multiple times. Definition values:${
            showDefs (map (def: def // { value = (mergeDefinitions loc opt.type [ def ]).mergedValue; }) defs')
          }"
        else
          mergeDefinitions loc opt.type defs';
      value = if opt ? apply then opt.apply res.mergedValue else res.mergedValue;
    in
    opt
    // {
      value = builtins.addErrorContext "while evaluating the option `${showOption loc}':" value;
      inherit (res.defsFinal') highestPrio;
      definitions = map (def: def.value) res.defsFinal;
      files = map (def: def.file) res.defsFinal;
      definitionsWithLocations = res.defsFinal;
      inherit (res) isDefined;
      __toString = _: showOption loc;
    };

  # One declaration, or several that can be one: default, example, description
  # and apply from at most one, the same type twice, or submodules, whose
  # modules are joined. (nixpkgs merges more types, e.g. enums' values, with
  # their functors: minilib refuses those.)
  mergeOptionDecls =
    loc: decls:
    let
      sameType =
        t: u:
        if t.name == "submodule" && u.name == "submodule" then
          lib.types.submoduleWith {
            shorthandOnlyDefinesConfig = true;
            modules = t.getSubModules ++ u.getSubModules;
          }
        else if t.name == u.name && t.description == u.description then
          t
        else
          null;
      join =
        acc: decl:
        let
          o = decl.options;
          bothHave = k: acc ? ${k} && o ? ${k};
          type = if bothHave "type" then sameType acc.type o.type else acc.type or o.type or null;
        in
        if
          bothHave "default"
          || bothHave "example"
          || bothHave "description"
          || bothHave "apply"
          || (bothHave "type" && type == null)
        then
          throw "The option `${showOption loc}' in `${decl._file}' is already declared in ${showFiles acc.declarations}."
        else
          o
          // acc
          // {
            declarations = acc.declarations ++ [ decl._file ];
          }
          // optionalAttrs (type != null) { inherit type; };
      merged = foldl' join {
        _type = "option";
        declarations = [ ];
      } decls;
    in
    merged
    // {
      inherit loc;
      type = merged.type or lib.types.unspecified;
    };

  # One level of the option tree: declarations and definitions by name.
  mergeLevel =
    prefix: decls: configs:
    let
      declsByName = zipAttrsWith (_: ds: ds) (
        map (
          m:
          if !isAttrs m.options then
            throw "An option declaration for `${concatStringsSep "." prefix}' has type `${typeOf m.options}' rather than an attribute set."
          else
            mapAttrs (_: o: {
              inherit (m) _file;
              options = o;
            }) m.options
        ) decls
      );
      checkedConfigs = map (
        c:
        if isAttrs c.config then
          c
        else
          throw "In module `${c.file}', you're trying to define a value of type `${typeOf c.config}' rather than an attribute set for the option `${concatStringsSep "." prefix}'!"
      ) configs;
      pushed = zipAttrsWith (_: concatLists) (
        map (
          c:
          mapAttrs (
            _: v:
            map (config: {
              inherit (c) file;
              inherit config;
            }) (pushDownProperties v)
          ) c.config
        ) checkedConfigs
      );
      raw = zipAttrsWith (_: ds: ds) (
        map (
          c:
          mapAttrs (_: value: {
            inherit (c) file;
            inherit value;
          }) c.config
        ) checkedConfigs
      );
      results = mapAttrs (
        name: ds:
        let
          loc = prefix ++ [ name ];
          optionDecls = filter (
            d:
            isOption d.options
            || (
              d.options._type or null != null
              && throw "In `${d._file}', `${showOption loc}' is a ${d.options._type}, not an option declared with mkOption."
            )
          ) ds;
        in
        if length optionDecls == length ds then
          {
            matched = evalOptionValue loc (mergeOptionDecls loc ds) (raw.${name} or [ ]);
            unmatched = [ ];
          }
        else if optionDecls != [ ] then
          throw "The option `${showOption loc}' in module `${(head optionDecls)._file}' would be a parent of the following options, but its type `${
            (head optionDecls).options.type.description or "<no description>"
          }' does not support nested options."
        else
          let
            sub = mergeLevel loc ds (pushed.${name} or [ ]);
          in
          {
            matched = sub.matchedOptions;
            unmatched = sub.unmatchedDefns;
          }
      ) declsByName;
      matchedOptions = mapAttrs (_: r: r.matched) results;
    in
    {
      inherit matchedOptions;
      unmatchedDefns =
        if configs == [ ] then
          [ ]
        else
          concatLists (
            mapAttrsToList (name: defs: map (def: def // { prefix = [ name ] ++ def.prefix or [ ]; }) defs) (
              mapAttrs (_: r: r.unmatched) results // removeAttrs raw (attrNames matchedOptions)
            )
          );
    };

  # A module as { _file, key, imports, options, config }.
  structured =
    file: key: m:
    let
      withFreeform =
        c:
        if m ? freeformType then
          mkMerge [
            c
            { _module.freeformType = m.freeformType; }
          ]
        else
          c;
      common = {
        _file = toString (m._file or file);
        key = toString (m.key or key);
        disabledModules =
          if m.disabledModules or [ ] == [ ] then
            [ ]
          else
            throw "minilib: disabledModules (in `${toString (m._file or file)}') is not implemented";
      };
    in
    if !isAttrs m then
      throw "module ${file} (${key}) does not look like a module."
    else if m ? config || m ? options then
      let
        bad = removeAttrs m [
          "_class"
          "_file"
          "key"
          "disabledModules"
          "imports"
          "options"
          "config"
          "meta"
          "freeformType"
        ];
      in
      if bad != { } then
        throw "Module `${key}' has an unsupported attribute `${head (attrNames bad)}'. This is caused by introducing a top-level `config' or `options' attribute. Add configuration attributes immediately on the top level instead, or move all of them (namely: ${toString (attrNames bad)}) into the explicit `config' attribute."
      else
        common
        // {
          imports = m.imports or [ ];
          options = m.options or { };
          config = withFreeform (
            if m ? meta then
              mkMerge [
                (m.config or { })
                { inherit (m) meta; }
              ]
            else
              m.config or { }
          );
        }
    else
      common
      // {
        imports = m.require or [ ] ++ m.imports or [ ];
        options = { };
        config = withFreeform (
          removeAttrs m [
            "_class"
            "_file"
            "key"
            "disabledModules"
            "require"
            "imports"
            "freeformType"
          ]
        );
      };

  applyArgs =
    key: f: args:
    f (
      args
      // mapAttrs (
        name: _:
        builtins.addErrorContext "while evaluating the module argument `${name}' in \"${key}\":" (
          args.${name} or args.config._module.args.${name}
        )
      ) (functionArgs f)
    );

  loadModule =
    args: file: key: m:
    if isFunction m then
      structured file key (applyArgs key m args)
    else if isAttrs m then
      if m._type or "module" == "module" then
        structured file key m
      else if m._type == "if" || m._type == "override" then
        loadModule args file key { config = m; }
      else
        throw "Module `${file}' is a ${m._type}, not a module."
    else if isList m then
      throw "Module imports can't be nested lists. Perhaps you meant to remove one level of lists? (in `${file}')"
    else
      let
        imported = import m;
      in
      structured (toString m) (toString m) (
        if isFunction imported then applyArgs (toString m) imported args else imported
      );

  collect =
    args: file: parentKey:
    imap1 (
      n: x:
      let
        module = loadModule args file "${parentKey}:anon-${toString n}" x;
      in
      {
        inherit (module) key;
        inherit module;
        children = collect args module._file module.key module.imports;
      }
    );

  evalModules =
    {
      modules,
      prefix ? [ ],
      specialArgs ? { },
    }:
    let
      types = lib.types;
      internal = {
        _file = "lib/modules.nix";
        key = "lib/modules.nix";
        options._module = {
          args = mkOption { type = types.lazyAttrsOf types.raw; };
          check = mkOption {
            type = types.bool;
            default = true;
            internal = true;
          };
          freeformType = mkOption {
            type = types.nullOr types.optionType;
            default = null;
            internal = true;
          };
        };
      };
      args = {
        inherit
          lib
          config
          options
          specialArgs
          ;
        _class = null;
        _prefix = prefix;
      }
      // specialArgs;
      collected = reverseList (
        map (x: x.module) (genericClosure {
          startSet = collect args "<unknown-file>" "" (modules ++ [ internal ]);
          operator = x: x.children;
        })
      );
      merged = mergeLevel prefix collected (
        concatMap (
          m:
          map (config: {
            file = m._file;
            inherit config;
          }) (pushDownProperties m.config)
        ) collected
      );
      options = merged.matchedOptions;
      declaredConfig = mapAttrsRecursiveCond (v: !isOption v) (_: v: v.value) options;
      freeformType = declaredConfig._module.freeformType;
      config =
        if freeformType == null then
          declaredConfig
        else
          let
            defs = map (def: {
              inherit (def) file;
              value = setAttrByPath def.prefix def.value;
            }) merged.unmatchedDefns;
          in
          recursiveUpdate (if defs == [ ] then { } else freeformType.merge prefix defs) declaredConfig;
      unmatchedError =
        let
          first = head merged.unmatchedDefns;
        in
        "The option `${
          showOption (prefix ++ first.prefix)
        }' does not exist. Definition values:${showDefs [ first ]}";
      checked =
        if declaredConfig._module.check && freeformType == null && merged.unmatchedDefns != [ ] then
          throw unmatchedError
        else
          x: x;
    in
    {
      _type = "configuration";
      config = checked (removeAttrs config [ "_module" ]);
      options = checked options;
      _module = checked config._module;
    };

  # The modules behind nixpkgs' renamed, removed and changed options: the old
  # option is still declared, so defining it is no undeclared-option error, and
  # says what happened (an assertion or a warning).
  doRename =
    {
      from,
      to,
      visible,
      warn,
      use,
    }:
    { config, options, ... }:
    let
      fromOpt = getAttrFromPath from options;
      toOf = lib.attrByPath to (abort "Renaming error: option `${showOption to}' does not exist.");
      toType = (lib.attrByPath to { } options).type or (lib.types.submodule { });
    in
    {
      options = setAttrByPath from (mkOption {
        inherit visible;
        description = "Alias of {option}`${showOption to}`.";
        apply = _: use (toOf config);
        type = toType;
      });
      config = mkMerge [
        (optionalAttrs (options ? warnings) {
          warnings =
            optional (warn && fromOpt.isDefined)
              "The option `${showOption from}' defined in ${showFiles fromOpt.files} has been renamed to `${showOption to}'.";
        })
        (mkIf fromOpt.isDefined (
          setAttrByPath to (
            mkMerge (map (mkOverride (fromOpt.highestPrio or defaultOverridePriority)) fromOpt.definitions)
          )
        ))
      ];
    };

  mkRenamedOptionModule =
    from: to:
    doRename {
      inherit from to;
      visible = false;
      warn = true;
      use = builtins.trace "Obsolete option `${showOption from}' is used. It was renamed to `${showOption to}'.";
    };

  mkRemovedOptionModule =
    optionName: replacementInstructions:
    { options, ... }:
    {
      options = setAttrByPath optionName (mkOption {
        visible = false;
        apply =
          _:
          throw "The option `${showOption optionName}' can no longer be used since it's been removed. ${replacementInstructions}";
      });
      config.assertions =
        let
          opt = getAttrFromPath optionName options;
        in
        [
          {
            assertion = !opt.isDefined;
            message = ''
              The option definition `${showOption optionName}' in ${showFiles opt.files} no longer has any effect; please remove it.
              ${replacementInstructions}
            '';
          }
        ];
    };

  mkMergedOptionModule =
    from: to: mergeFn:
    { config, options, ... }:
    let
      unset = "_mkMergedOptionModule";
    in
    {
      options = foldl' recursiveUpdate { } (
        map (
          path:
          setAttrByPath path (mkOption {
            visible = false;
            default = unset;
          })
        ) from
      );
      config = {
        warnings = filter (x: x != "") (
          map (
            f:
            lib.optionalString (getAttrFromPath f config != unset)
              "The option `${showOption f}' defined in ${showFiles (getAttrFromPath f options).files} has been changed to `${showOption to}' that has a different type. Please read `${showOption to}' documentation and update your configuration accordingly."
          ) from
        );
      }
      // setAttrByPath to (
        mkMerge (optional (any (f: getAttrFromPath f config != unset) from) (mergeFn config))
      );
    };
  mkChangedOptionModule =
    from: to: changeFn:
    mkMergedOptionModule [ from ] to changeFn;
in
{
  inherit
    evalModules
    mergeDefinitions
    mkChangedOptionModule
    mkMergedOptionModule
    mkRemovedOptionModule
    mkRenamedOptionModule
    pushDownProperties
    ;
}
