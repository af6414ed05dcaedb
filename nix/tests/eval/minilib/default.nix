# minilib: the project's own small stand-in for nixpkgs' lib, written with builtins
# only (Nix 2.8, Debian 12's nix-instantiate, is enough), so that CI evaluates
# services.postmaster with evalModules although it can neither fetch nor commit
# nixpkgs. It holds what nix/module.nix, the stubs of nixpkgs' mail modules
# (nix/tests/eval/stubs), nix/tests/eval/*.nix, the VM tests' nodes and
# nix/tests/module-eval.nix use, and the few more that nixpkgs' real mail modules
# take from `with lib;` (for the opt-in evaluation against them), and nothing
# more: a function missing here is an evaluation error, never a silent default.
#
# The module system (modules.nix) and the option types (types.nix) follow the
# behaviour of nixpkgs' lib where this project's checks depend on it: undeclared
# options and wrong types are errors naming the option, priorities (mkDefault,
# mkForce, mkOverride), mkIf/mkMerge, mkOrder, list and lines merging, defaults,
# apply, readOnly, submodules with their names, freeform types, the `options`
# argument. tests/nix-checks.sh compares what module-eval.nix sees under this
# lib and under nixpkgs' lib (opt-in) so that drift shows; the unit tests are
# nix/tests/eval/minilib/tests.nix.
let
  inherit (builtins)
    all
    any
    attrNames
    concatLists
    concatMap
    concatStringsSep
    elemAt
    filter
    foldl'
    genList
    hasAttr
    head
    isAttrs
    isFunction
    isList
    isPath
    isString
    length
    listToAttrs
    mapAttrs
    match
    replaceStrings
    split
    stringLength
    substring
    tail
    zipAttrsWith
    ;

  # Lists.
  last = list: elemAt list (length list - 1);
  init = list: genList (elemAt list) (length list - 1);
  take = n: list: genList (elemAt list) (if n < length list then n else length list);
  drop = n: list: genList (i: elemAt list (i + n)) (if n < length list then length list - n else 0);
  dropEnd = n: list: take (if n < length list then length list - n else 0) list;
  reverseList = list: genList (i: elemAt list (length list - 1 - i)) (length list);
  imap0 = f: list: genList (i: f i (elemAt list i)) (length list);
  imap1 = f: list: genList (i: f (i + 1) (elemAt list i)) (length list);
  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  toList = x: if isList x then x else [ x ];
  count = pred: foldl' (n: x: if pred x then n + 1 else n) 0;
  unique = foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ];
  remove = x: filter (y: y != x);
  flatten = x: if isList x then concatMap flatten x else [ x ];

  # Strings.
  concatStrings = concatStringsSep "";
  concatMapStrings = f: list: concatStrings (map f list);
  concatMapStringsSep =
    sep: f: list:
    concatStringsSep sep (map f list);
  optionalString = cond: s: if cond then s else "";
  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;
  hasSuffix =
    suffix: s:
    let
      ls = stringLength s;
      lx = stringLength suffix;
    in
    ls >= lx && substring (ls - lx) lx s == suffix;
  # Regex-special characters escaped: a needle or separator is taken literally.
  escapeRegex =
    let
      special = stringToCharacters "\\[{()^$?*+|.";
    in
    replaceStrings special (map (c: "\\" + c) special);
  # By builtins.split, not match ".*…": std::regex (Nix 2.8) recurses per
  # character on `.*` and overflows the stack on long texts.
  hasInfix = infix: s: length (split (escapeRegex infix) s) > 1;
  removePrefix =
    prefix: s: if hasPrefix prefix s then substring (stringLength prefix) (stringLength s) s else s;
  removeSuffix =
    suffix: s: if hasSuffix suffix s then substring 0 (stringLength s - stringLength suffix) s else s;
  splitString = sep: s: filter isString (split (escapeRegex sep) s);
  stringToCharacters = s: genList (i: substring i 1 s) (stringLength s);
  escapeShellArg =
    arg:
    let
      s = toString arg;
    in
    if match "[[:alnum:],._+:@%/-]+" s == null then "'${replaceStrings [ "'" ] [ "'\\''" ] s}'" else s;
  escapeNixString = s: replaceStrings [ "$" ] [ "\\$" ] (builtins.toJSON s);
  isStringLike = x: isString x || isPath x || x ? outPath || x ? __toString;
  boolToString = b: if b then "true" else "false";
  boolToYesNo = b: if b then "yes" else "no";

  # Versions, as nixpkgs compares them (builtins.compareVersions).
  versionOlder = v1: v2: builtins.compareVersions v2 v1 == 1;
  versionAtLeast = v1: v2: !versionOlder v1 v2;

  # Attribute sets.
  nameValuePair = name: value: { inherit name value; };
  mapAttrsToList = f: attrs: map (n: f n attrs.${n}) (attrNames attrs);
  mapAttrs' = f: attrs: listToAttrs (mapAttrsToList f attrs);
  filterAttrs =
    pred: attrs:
    listToAttrs (
      concatMap (n: if pred n attrs.${n} then [ (nameValuePair n attrs.${n}) ] else [ ]) (attrNames attrs)
    );
  optionalAttrs = cond: attrs: if cond then attrs else { };
  genAttrs = names: f: listToAttrs (map (n: nameValuePair n (f n)) names);
  attrByPath =
    path: default: attrs:
    if path == [ ] then
      attrs
    else if isAttrs attrs && hasAttr (head path) attrs then
      attrByPath (tail path) default attrs.${head path}
    else
      default;
  hasAttrByPath =
    path: attrs:
    path == [ ]
    || (isAttrs attrs && hasAttr (head path) attrs && hasAttrByPath (tail path) attrs.${head path});
  getAttrFromPath =
    path: attrs: attrByPath path (throw "cannot find attribute `${concatStringsSep "." path}'") attrs;
  setAttrByPath =
    path: value: if path == [ ] then value else { ${head path} = setAttrByPath (tail path) value; };
  # The right side wins, except where both sides are attribute sets.
  recursiveUpdate =
    lhs: rhs:
    zipAttrsWith
      (
        _: values:
        if length values == 1 || !(isAttrs (head values) && isAttrs (elemAt values 1)) then
          last values
        else
          recursiveUpdate (head values) (elemAt values 1)
      )
      [
        lhs
        rhs
      ];
  mapAttrsRecursiveCond =
    cond: f: set:
    let
      recurse =
        path:
        mapAttrs (
          name: value:
          if isAttrs value && cond value then recurse (path ++ [ name ]) value else f (path ++ [ name ]) value
        );
    in
    recurse [ ] set;
  zipAttrs = zipAttrsWith (_: values: values);
  isDerivation = x: isAttrs x && x.type or null == "derivation";

  # Functions and numbers.
  id = x: x;
  flip =
    f: a: b:
    f b a;
  mod = a: b: a - (a / b) * b;
  min = a: b: if a < b then a else b;

  getExe' =
    pkg: name:
    assert isDerivation pkg;
    "${pkg}/bin/${name}";
  getExe = pkg: getExe' pkg (pkg.meta.mainProgram or pkg.pname or pkg.name);

  # Properties of definitions.
  mkIf = condition: content: {
    _type = "if";
    inherit condition content;
  };
  mkMerge = contents: {
    _type = "merge";
    inherit contents;
  };
  mkOverride = priority: content: {
    _type = "override";
    inherit priority content;
  };
  defaultOverridePriority = 100;
  mkOptionDefault = mkOverride 1500;
  mkDefault = mkOverride 1000;
  mkImageMediaOverride = mkOverride 60;
  mkForce = mkOverride 50;
  mkVMOverride = mkOverride 10;
  mkOrder = priority: content: {
    _type = "order";
    inherit priority content;
  };
  defaultOrderPriority = 1000;
  mkBefore = mkOrder 500;
  mkAfter = mkOrder 1500;

  # Option declarations.
  mkOption = attrs: attrs // { _type = "option"; };
  isOption = x: isAttrs x && x._type or null == "option";
  mkEnableOption =
    name:
    mkOption {
      type = self.types.bool;
      default = false;
      example = true;
      description = "Whether to enable ${name}.";
    };
  mkPackageOption =
    pkgs: name:
    {
      nullable ? false,
      default ? name,
      example ? null,
      extraDescription ? "",
      pkgsText ? "pkgs",
    }:
    let
      path = toList default;
      text = concatStringsSep "." path;
    in
    mkOption (
      {
        type = if nullable then self.types.nullOr self.types.package else self.types.package;
        description = "The ${last (toList name)} package to use.${extraDescription}";
      }
      // optionalAttrs (default != null) {
        default = attrByPath path (throw "${text} cannot be found in ${pkgsText}") pkgs;
        defaultText = literalExpression "${pkgsText}.${text}";
      }
      // optionalAttrs (example != null) { inherit example; }
    );
  literalExpression = text: {
    _type = "literalExpression";
    inherit text;
  };
  literalMD = text: {
    _type = "literalMD";
    inherit text;
  };
  # How nixpkgs prints an option's path: identifiers as they are, other names
  # (and keywords) quoted, placeholders (<name>, *) bare.
  keywords = [
    "assert"
    "else"
    "if"
    "in"
    "inherit"
    "let"
    "or"
    "rec"
    "then"
    "with"
  ];
  showOption =
    parts:
    concatStringsSep "." (
      map (
        part:
        if
          part == "*"
          || match "<.*>" part != null
          || (match "[a-zA-Z_][a-zA-Z0-9_'-]*" part != null && !builtins.elem part keywords)
        then
          part
        else
          escapeNixString part
      ) parts
    );
  showFiles = files: concatStringsSep " and " (map (f: "`${f}'") files);
  # A definition's value for an error message: at most three lines, and nothing
  # when printing it fails itself.
  showDefs = concatMapStrings (
    def:
    let
      printed = builtins.tryEval (showValue def.value);
      lines = splitString "\n" printed.value;
      shown = concatStringsSep "\n    " (take 3 lines ++ optional (length lines > 3) "...");
    in
    "\n- In `${def.file}'"
    + (
      if !printed.success then
        ""
      else if length lines > 1 then
        ":\n    " + shown
      else
        ": " + shown
    )
  );
  showValue =
    v:
    if isString v then
      escapeNixString v
    else if isFunction v then
      "<function>"
    else if isDerivation v then
      "<derivation ${v.name or "?"}>"
    else if isList v then
      "[ ${concatMapStringsSep " " showValue v} ]"
    else if isAttrs v then
      "{ ${concatStrings (mapAttrsToList (n: x: "${showOption [ n ]} = ${showValue x}; ") v)}}"
    else if v == null then
      "null"
    else if v == true || v == false then
      boolToString v
    else
      toString v;

  # Merge functions of option types.
  getValues = map (def: def.value);
  getFiles = map (def: def.file);
  mergeEqualOption =
    loc: defs:
    if length defs == 1 then
      (head defs).value
    else
      (foldl' (
        first: def:
        if def.value != first.value then
          throw "The option `${showOption loc}' has conflicting definition values:${
            showDefs [
              first
              def
            ]
          }\nUse `lib.mkForce value` or `lib.mkDefault value` to change the priority on any of these definitions."
        else
          first
      ) (head defs) (tail defs)).value;
  mergeUniqueOption =
    { message }:
    loc: defs:
    if length defs == 1 then
      (head defs).value
    else
      throw "The option `${showOption loc}' is defined multiple times while it's expected to be unique.\n${message}\nDefinition values:${showDefs defs}";
  mergeOneOption = mergeUniqueOption { message = ""; };
  # What a type without a merge function of its own does with several values.
  mergeDefaultOption =
    loc: defs:
    let
      list = getValues defs;
    in
    if length list == 1 then
      head list
    else if all isFunction list then
      x: mergeDefaultOption loc (map (d: d // { value = d.value x; }) defs)
    else if all isList list then
      concatLists list
    else if all isAttrs list then
      foldl' (a: b: a // b) { } list
    else if all builtins.isBool list then
      any id list
    else if all isString list then
      concatStrings list
    else if all builtins.isInt list && all (x: x == head list) list then
      head list
    else
      throw "Cannot merge definitions of `${showOption loc}'. Definition values:${showDefs defs}";

  # Used by nixpkgs' real mail modules (the opt-in evaluation against them on a
  # developer's machine, tests/nix-checks.sh's POSTMASTER_NIXPKGS_MODULES), which
  # take them from `with lib;`.
  forRealModules = {
    inherit (builtins)
      baseNameOf
      elemAt
      genList
      getAttr
      isAttrs
      isBool
      isInt
      isList
      isPath
      isString
      length
      listToAttrs
      map
      match
      removeAttrs
      replaceStrings
      split
      stringLength
      toString
      trace
      unsafeDiscardStringContext
      ;
    and = a: b: a && b;
    or = a: b: a || b;
    add = a: b: a + b;
    const = x: _: x;
    max = a: b: if a > b then a else b;
    foldr =
      op: nul: list:
      let
        go = i: if i == length list then nul else op (elemAt list i) (go (i + 1));
      in
      go 0;
    imap = imap1;
    singleton = x: [ x ];
    escape = chars: replaceStrings chars (map (c: "\\${c}") chars);
    escapeShellArgs = concatMapStringsSep " " escapeShellArg;
    inherit (builtins) attrValues;
    attrsToList = mapAttrsToList nameValuePair;
    filterAttrsRecursive =
      pred: set:
      listToAttrs (
        concatMap (
          name:
          let
            v = set.${name};
          in
          if pred name v then
            [ (nameValuePair name (if isAttrs v then self.filterAttrsRecursive pred v else v)) ]
          else
            [ ]
        ) (attrNames set)
      );
    fixedWidthString =
      width: filler: s:
      if stringLength s >= width then s else self.fixedWidthString width filler (filler + s);
    pipe = foldl' (x: f: f x);
    zipListsWith =
      f: a: b:
      genList (i: f (elemAt a i) (elemAt b i)) (min (length a) (length b));
    traceSeq = x: y: builtins.trace (builtins.deepSeq x x) y;
  };

  self = forRealModules // {
    inherit
      all
      any
      attrByPath
      attrNames
      boolToString
      boolToYesNo
      concatLists
      concatMap
      concatMapStrings
      concatMapStringsSep
      concatStrings
      concatStringsSep
      count
      defaultOrderPriority
      defaultOverridePriority
      drop
      dropEnd
      escapeNixString
      escapeRegex
      escapeShellArg
      filter
      filterAttrs
      flatten
      flip
      foldl'
      genAttrs
      getAttrFromPath
      getExe
      getExe'
      getFiles
      getValues
      hasAttrByPath
      hasInfix
      hasPrefix
      hasSuffix
      head
      id
      imap0
      imap1
      init
      isDerivation
      isOption
      isStringLike
      last
      literalExpression
      literalMD
      mapAttrs
      mapAttrs'
      mapAttrsRecursiveCond
      mapAttrsToList
      mergeDefaultOption
      mergeEqualOption
      mergeOneOption
      mergeUniqueOption
      min
      mkAfter
      mkBefore
      mkDefault
      mkEnableOption
      mkForce
      mkIf
      mkImageMediaOverride
      mkMerge
      mkOption
      mkOptionDefault
      mkOrder
      mkOverride
      mkPackageOption
      mkVMOverride
      mod
      nameValuePair
      optional
      optionalAttrs
      optionals
      optionalString
      recursiveUpdate
      remove
      removePrefix
      removeSuffix
      reverseList
      setAttrByPath
      showDefs
      showFiles
      showOption
      splitString
      stringToCharacters
      tail
      take
      toList
      unique
      versionAtLeast
      versionOlder
      zipAttrs
      ;
    types = import ./types.nix self;
    inherit (self.types) mkOptionType;
    inherit (import ./modules.nix self)
      evalModules
      mkChangedOptionModule
      mkMergedOptionModule
      mkRemovedOptionModule
      mkRenamedOptionModule
      ;
    trivial.release = "minilib";
  };
in
self
