# minilib's option types (see default.nix): a type is a check of a definition's
# top (isString, isList, …; nested values are checked when their own option-like
# merge runs, as in nixpkgs) and a merge of the definitions left after mkIf,
# mkMerge and the priorities. Descriptions are nixpkgs' words, since error
# messages quote them.
lib:

let
  inherit (builtins)
    all
    concatLists
    elem
    filter
    foldl'
    isAttrs
    isBool
    isFunction
    isInt
    isList
    isString
    length
    mapAttrs
    match
    substring
    zipAttrsWith
    ;
  inherit (lib)
    concatMapStringsSep
    escapeNixString
    getValues
    imap1
    isDerivation
    isStringLike
    last
    mergeDefaultOption
    mergeEqualOption
    mergeOneOption
    showFiles
    showOption
    ;
  inherit (import ./modules.nix lib) evalModules mergeDefinitions;

  mkOptionType =
    {
      name,
      description ? null,
      descriptionClass ? null,
      check ? (_: true),
      merge ? mergeDefaultOption,
      emptyValue ? { },
      getSubOptions ? (_: { }),
      getSubModules ? null,
      substSubModules ? (_: null),
      nestedTypes ? { },
      deprecationMessage ? null,
      ...
    }:
    {
      _type = "option-type";
      inherit
        name
        descriptionClass
        check
        merge
        emptyValue
        getSubOptions
        getSubModules
        substSubModules
        nestedTypes
        deprecationMessage
        ;
      description = if description == null then name else description;
    };

  # "list of (null or string)": a phrase in parentheses unless it reads well bare.
  phrase =
    unparenthesized: t:
    if unparenthesized (t.descriptionClass or null) then t.description else "(${t.description})";
  nounOr = classes: class: class == "noun" || elem class classes;

  addCheck = t: extra: t // { check = x: t.check x && extra x; };
  # A type of single values: several definitions must agree.
  plain =
    name: description: check:
    mkOptionType {
      inherit name description check;
      descriptionClass = "noun";
      merge = mergeEqualOption;
    };

  isStorePath =
    x:
    isStringLike x
    && (
      let
        s = toString x;
      in
      substring 0 (builtins.stringLength builtins.storeDir + 1) s == "${builtins.storeDir}/"
      && match "[^/]+" (substring (builtins.stringLength builtins.storeDir + 1) (-1) s) != null
    );

  between =
    lowest: highest:
    addCheck types.int (x: x >= lowest && x <= highest)
    // {
      name = "intBetween";
      description = "integer between ${toString lowest} and ${toString highest} (both inclusive)";
    };
  unsignedBits =
    bits: highest:
    between 0 highest
    // {
      name = "unsignedInt${toString bits}";
      description = "${toString bits} bit unsigned integer; between 0 and ${toString highest} (both inclusive)";
    };

  # Definitions of one attribute of several attribute-set definitions, with the
  # file each came from.
  byName =
    defs:
    zipAttrsWith (_: ds: ds) (
      map (
        def:
        mapAttrs (_: value: {
          inherit (def) file;
          inherit value;
        }) def.value
      ) defs
    );

  attrsWith =
    lazy: elemType:
    mkOptionType {
      name = if lazy then "lazyAttrsOf" else "attrsOf";
      description =
        (if lazy then "lazy attribute set" else "attribute set")
        + " of ${phrase (nounOr [ "composite" ]) elemType}";
      descriptionClass = "composite";
      check = isAttrs;
      merge =
        loc: defs:
        if lazy then
          mapAttrs (
            name: ds:
            let
              merged = mergeDefinitions (loc ++ [ name ]) elemType ds;
            in
            if merged.isDefined then merged.mergedValue else elemType.emptyValue.value or merged.mergedValue
          ) (byName defs)
        else
          # Attributes whose definitions all vanished (mkIf false) are left out:
          # that forces their conditions, not their values.
          let
            merged = mapAttrs (name: ds: mergeDefinitions (loc ++ [ name ]) elemType ds) (byName defs);
          in
          mapAttrs (_: m: m.mergedValue) (lib.filterAttrs (_: m: m.isDefined) merged);
      emptyValue.value = { };
      getSubOptions = prefix: elemType.getSubOptions (prefix ++ [ "<name>" ]);
      getSubModules = elemType.getSubModules;
      substSubModules = m: attrsWith lazy (elemType.substSubModules m);
      nestedTypes.elemType = elemType;
    };

  either =
    t1: t2:
    mkOptionType {
      name = "either";
      description = "${phrase (nounOr [ "conjunction" ]) t1} or ${
        phrase (nounOr [
          "conjunction"
          "composite"
        ]) t2
      }";
      descriptionClass = "conjunction";
      check = x: t1.check x || t2.check x;
      merge =
        loc: defs:
        let
          values = getValues defs;
        in
        if all t1.check values then
          t1.merge loc defs
        else if all t2.check values then
          t2.merge loc defs
        else
          mergeOneOption loc defs;
      nestedTypes = {
        left = t1;
        right = t2;
      };
    };

  submoduleWith =
    {
      modules,
      specialArgs ? { },
      shorthandOnlyDefinesConfig ? false,
      description ? null,
    }@attrs:
    let
      nameDefault = {
        _file = "lib/modules.nix";
        config._module.args.name = lib.mkOptionDefault "‹name›";
      };
      # Definitions: an attribute set is configuration (with the shorthand), a
      # function or path a module of its own.
      asModules = map (
        { value, file }:
        if isAttrs value && shorthandOnlyDefinesConfig then
          {
            _file = file;
            config = value;
          }
        else
          {
            _file = file;
            imports = [ value ];
          }
      );
      base = evalModules {
        inherit specialArgs;
        modules = [ nameDefault ] ++ modules;
      };
      freeform = base._module.freeformType;
    in
    mkOptionType {
      name = "submodule";
      description =
        if description != null then
          description
        else if freeform != null then
          "open submodule of ${phrase (nounOr [ "composite" ]) freeform}"
        else
          "submodule";
      # No class: "attribute set of (submodule)", as nixpkgs words it.
      check = x: isAttrs x || isFunction x || types.path.check x;
      merge =
        loc: defs:
        (evalModules {
          inherit specialArgs;
          prefix = loc;
          modules = [
            nameDefault
          ]
          ++ modules
          ++ [
            {
              _file = "lib/modules.nix";
              config._module.args.name = last loc;
            }
          ]
          ++ asModules defs;
        }).config;
      emptyValue.value = { };
      getSubOptions =
        prefix:
        (evalModules {
          inherit specialArgs prefix;
          modules = [ nameDefault ] ++ modules;
        }).options;
      getSubModules = modules;
      substSubModules = m: submoduleWith (attrs // { modules = m; });
      nestedTypes = lib.optionalAttrs (freeform != null) { freeformType = freeform; };
    };

  types = {
    inherit mkOptionType;
    # As nixpkgs' lib.types.types (redis.nix says `with lib.types; … types.str`).
    inherit types;

    raw = mkOptionType {
      name = "raw";
      description = "raw value";
      merge = mergeOneOption;
    };

    # Attribute sets merge attribute by attribute, functions by their results;
    # other values must agree (lists may not come from two places).
    anything = mkOptionType {
      name = "anything";
      description = "anything";
      descriptionClass = "noun";
      merge =
        loc: defs:
        let
          kind = v: if isAttrs v && isStringLike v then "stringCoercibleSet" else builtins.typeOf v;
          common = foldl' (
            k: def:
            if kind def.value == k then
              k
            else
              throw "The option `${showOption loc}' has conflicting option types in ${showFiles (lib.getFiles defs)}"
          ) (kind (builtins.head defs).value) defs;
        in
        if common == "set" then
          (types.lazyAttrsOf types.anything).merge loc defs
        else if common == "list" then
          if length defs > 1 then
            throw "The option `${showOption loc}' has conflicting definitions, in ${showFiles (lib.getFiles defs)}."
          else
            (types.listOf types.anything).merge loc defs
        else if common == "lambda" then
          arg:
          types.anything.merge (loc ++ [ "<function body>" ]) (
            map (def: def // { value = def.value arg; }) defs
          )
        else if common == "stringCoercibleSet" then
          mergeOneOption loc defs
        else
          mergeEqualOption loc defs;
    };

    unspecified = mkOptionType {
      name = "unspecified";
      description = "unspecified value";
      descriptionClass = "noun";
    };

    bool = plain "bool" "boolean" isBool;

    int = plain "int" "signed integer" isInt;

    ints = {
      inherit between;
      positive = addCheck types.int (x: x > 0) // {
        name = "positiveInt";
        description = "positive integer, meaning >0";
      };
      unsigned = addCheck types.int (x: x >= 0) // {
        name = "unsignedInt";
        description = "unsigned integer, meaning >=0";
      };
      u8 = unsignedBits 8 255;
      u16 = unsignedBits 16 65535;
      u32 = unsignedBits 32 4294967295;
    };
    port = types.ints.u16;

    float = plain "float" "floating point number" builtins.isFloat;
    number = either types.int types.float;
    numbers = {
      positive = addCheck types.number (x: x > 0) // {
        name = "numberPositive";
        description = "positive integer or floating point number, meaning >0";
        descriptionClass = "nonRestrictiveClause";
      };
    };

    str = plain "str" "string" isString;

    nonEmptyStr = plain "nonEmptyStr" "non-empty string" (x: isString x && match "[ \t\n]*" x == null);

    strMatching =
      pattern:
      mkOptionType {
        name = "strMatching ${escapeNixString pattern}";
        description = "string matching the pattern ${pattern}";
        descriptionClass = "noun";
        check = x: isString x && match pattern x != null;
        merge = mergeEqualOption;
      };

    separatedString =
      sep:
      mkOptionType {
        name = "separatedString";
        description =
          if sep == "" then "Concatenated string" else "strings concatenated with ${builtins.toJSON sep}";
        descriptionClass = "noun";
        check = isString;
        merge = _: defs: builtins.concatStringsSep sep (getValues defs);
      };
    lines = types.separatedString "\n";
    commas = types.separatedString ",";

    attrs = mkOptionType {
      name = "attrs";
      description = "attribute set";
      check = isAttrs;
      merge = _: foldl' (acc: def: acc // def.value) { };
      emptyValue.value = { };
    };

    package = mkOptionType {
      name = "package";
      descriptionClass = "noun";
      check = x: isDerivation x || isStorePath x;
      # A store path given as a string stands for a derivation of it.
      merge =
        loc: defs:
        let
          res = mergeOneOption loc defs;
        in
        if builtins.isPath res || (isString res && !builtins.hasContext res) then
          {
            type = "derivation";
            name = builtins.baseNameOf (toString res);
            outPath = toString res;
          }
        else
          res;
    };

    # An absolute path: a path value or a string (a derivation: its store path).
    path = mkOptionType {
      name = "path";
      description = "absolute path";
      descriptionClass = "noun";
      check = x: isStringLike x && substring 0 1 (toString x) == "/";
      merge = mergeEqualOption;
    };

    enum =
      values:
      let
        show =
          v:
          if isString v then
            ''"${v}"''
          else if isInt v then
            toString v
          else if isBool v then
            lib.boolToString v
          else
            "<${builtins.typeOf v}>";
      in
      mkOptionType {
        name = "enum";
        description =
          if values == [ ] then
            "impossible (empty enum)"
          else if length values == 1 then
            "value ${show (builtins.head values)} (singular enum)"
          else
            "one of ${concatMapStringsSep ", " show values}";
        descriptionClass = if length values < 2 then "noun" else "conjunction";
        check = x: elem x values;
        merge = mergeEqualOption;
      };

    listOf =
      elemType:
      mkOptionType {
        name = "listOf";
        description = "list of ${phrase (nounOr [ "composite" ]) elemType}";
        descriptionClass = "composite";
        check = isList;
        # Each element is merged on its own (its mkIf discharged, its type
        # checked), under a name saying where it came from.
        merge =
          loc: defs:
          map (m: m.mergedValue) (
            filter (m: m.isDefined) (
              concatLists (
                imap1 (
                  n: def:
                  imap1 (
                    m: value:
                    mergeDefinitions (loc ++ [ "[definition ${toString n}-entry ${toString m}]" ]) elemType [
                      {
                        inherit (def) file;
                        inherit value;
                      }
                    ]
                  ) def.value
                ) defs
              )
            )
          );
        emptyValue.value = [ ];
        getSubOptions = prefix: elemType.getSubOptions (prefix ++ [ "*" ]);
        getSubModules = elemType.getSubModules;
        substSubModules = m: types.listOf (elemType.substSubModules m);
        nestedTypes.elemType = elemType;
      };

    nonEmptyListOf =
      elemType:
      let
        list = addCheck (types.listOf elemType) (l: l != [ ]);
      in
      list
      // {
        description = "non-empty ${phrase (c: c == "noun") list}";
        emptyValue = { };
      };

    attrsOf = attrsWith false;
    lazyAttrsOf = attrsWith true;

    nullOr =
      elemType:
      mkOptionType {
        name = "nullOr";
        description = "null or ${phrase (nounOr [ "conjunction" ]) elemType}";
        descriptionClass = "conjunction";
        check = x: x == null || elemType.check x;
        merge =
          loc: defs:
          let
            nulls = filter (def: def.value == null) defs;
          in
          if nulls == [ ] then
            elemType.merge loc defs
          else if length nulls == length defs then
            null
          else
            throw "The option `${showOption loc}` is defined both null and not null, in ${showFiles (lib.getFiles defs)}.";
        emptyValue.value = null;
        inherit (elemType) getSubOptions getSubModules;
        substSubModules = m: types.nullOr (elemType.substSubModules m);
        nestedTypes.elemType = elemType;
      };

    inherit either;
    oneOf =
      ts:
      if ts == [ ] then
        throw "types.oneOf needs at least one type in its argument"
      else
        foldl' either (builtins.head ts) (builtins.tail ts);

    inherit submoduleWith;
    submodule =
      modules:
      submoduleWith {
        shorthandOnlyDefinesConfig = true;
        modules = lib.toList modules;
      };

    # The type of a type (_module.freeformType).
    optionType = mkOptionType {
      name = "optionType";
      description = "optionType";
      descriptionClass = "noun";
      check = x: x._type or null == "option-type";
      merge =
        loc: defs:
        if length defs == 1 then
          (builtins.head defs).value
        else
          throw "minilib: `${showOption loc}' is defined ${toString (length defs)} times; merging types is not implemented";
    };
  };
in
types
