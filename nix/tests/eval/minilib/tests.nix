# Unit tests of minilib's module system and types: small evaluations with the
# value nixpkgs' lib gives them, and evaluations that must fail with the start of
# nixpkgs' error message. tests/nix-checks.sh runs them against minilib always and
# against nixpkgs' lib when it has one (POSTMASTER_NIXPKGS_LIB), so an expectation
# written here is nixpkgs' behaviour, not minilib's own idea of it.
#
#   nix-instantiate --eval --strict nix/tests/eval/minilib/tests.nix -A summary
#   nix-instantiate --eval --strict nix/tests/eval/minilib/tests.nix -A failures.NAME.value
{
  lib ? import ./.,
}:

let
  inherit (lib)
    mkAfter
    mkBefore
    mkDefault
    mkForce
    mkIf
    mkMerge
    mkOption
    mkOrder
    mkOverride
    types
    ;

  eval = modules: (lib.evalModules { inherit modules; }).config;
  opt = type: default: mkOption { inherit type default; };
  # Declares `assertions` and `warnings` as NixOS does (lists of anything / strings).
  nixosLike = {
    options.assertions = opt (types.listOf types.unspecified) [ ];
    options.warnings = opt (types.listOf types.str) [ ];
  };
  # Values each option type of "types that take …" below takes as it is.
  taken = {
    either = [ "s" ];
    oneOf = "str";
    nullOr = null;
    enum = "b";
    positive = 7;
    port = 587;
    path = "/etc/ssl/cert.pem";
    pattern = "v=12";
    package = fakePackage "q";
    nonEmpty = [ 2 ];
  };
  fakePackage = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };

  cases = {
    "priorities: mkForce over a plain value over mkDefault over the default" = {
      actual = map (defs: (eval ([ { options.a = opt types.int 1; } ] ++ defs)).a) [
        [ ]
        [ { a = mkDefault 2; } ]
        [
          { a = mkDefault 2; }
          { a = 3; }
        ]
        [
          { a = mkDefault 2; }
          { a = 3; }
          { a = mkForce 4; }
        ]
        [
          { a = mkForce 4; }
          { a = mkOverride 10 5; }
        ]
      ];
      expected = [
        1
        2
        3
        4
        5
      ];
    };
    "priorities: equal values of one priority agree, lower ones are dropped" = {
      actual =
        (eval [
          { options.s = opt types.str "default"; }
          { s = "x"; }
          { s = "x"; }
          { s = mkDefault "y"; }
        ]).s;
      expected = "x";
    };
    "mkIf and mkMerge, nested and at the top of a module" = {
      actual = eval [
        {
          options.a = opt (types.listOf types.int) [ ];
          options.b = opt types.str "b";
          options.c = opt types.bool false;
        }
        (mkIf true {
          a = mkMerge [
            [ 1 ]
            (mkIf false [ 2 ])
            (mkIf true [ 3 ])
          ];
        })
        (mkIf false { b = "never"; })
        {
          config = mkMerge [
            { c = true; }
            (mkIf false { c = false; })
          ];
        }
      ];
      expected = {
        a = [
          1
          3
        ];
        b = "b";
        c = true;
      };
    };
    "lists: concatenated, in the order nixpkgs gives modules and imports" = {
      actual =
        (eval [
          { options.l = opt (types.listOf types.str) [ ]; }
          { l = [ "first module" ]; }
          {
            imports = [ { l = [ "imported by the third" ]; } ];
            l = [ "third module" ];
          }
          { l = [ "fourth module" ]; }
        ]).l;
      expected = [
        "imported by the third"
        "fourth module"
        "third module"
        "first module"
      ];
    };
    "lists and lines: mkBefore, mkAfter, mkOrder" = {
      actual = eval [
        {
          options.l = opt (types.listOf types.int) [ ];
          options.t = opt types.lines "";
        }
        {
          l = mkAfter [ 9 ];
          t = mkAfter "last";
        }
        {
          l = [ 5 ];
          t = "middle";
        }
        {
          l = mkBefore [ 1 ];
          t = mkBefore "first";
        }
        { l = mkOrder 1200 [ 7 ]; }
      ];
      expected = {
        l = [
          1
          5
          7
          9
        ];
        t = "first\nmiddle\nlast";
      };
    };
    "separatedString and a default that is overridden, not joined" = {
      actual = eval [
        {
          options.c = opt types.commas "dropped";
          options.s = opt (types.separatedString " ") "";
        }
        {
          c = "a";
          s = "x";
        }
        {
          c = "b";
          s = "y";
        }
      ];
      expected = {
        c = "b,a";
        s = "y x";
      };
    };
    "config is a fixed point; the conditions of mkIf read it" = {
      actual = eval [
        (
          { config, ... }:
          {
            options.a = opt types.int 1;
            options.b = opt types.int (config.a + 1);
            options.enable = opt types.bool false;
            options.c = opt types.str "off";
            config = mkIf config.enable { c = "on"; };
          }
        )
        { a = 10; }
        (
          { config, ... }:
          {
            enable = config.b > 10;
          }
        )
      ];
      expected = {
        a = 10;
        b = 11;
        enable = true;
        c = "on";
      };
    };
    "apply, readOnly with its default alone, mkOption without a type" = {
      actual = eval [
        {
          options.a = mkOption {
            type = types.int;
            default = 1;
            apply = x: x * 100;
          };
          options.r = mkOption {
            type = types.str;
            default = "fixed";
            readOnly = true;
          };
          options.u = mkOption { };
        }
        {
          a = 2;
          u = [ 1 ];
        }
        { u = [ 2 ]; }
      ];
      expected = {
        a = 200;
        r = "fixed";
        u = [
          2
          1
        ];
      };
    };
    "attrsOf: merged by attribute, mkIf per attribute; lazyAttrsOf keeps a vanished name" = {
      actual =
        let
          c = eval [
            {
              options.s = opt (types.attrsOf types.int) { };
              options.z = opt (types.lazyAttrsOf (types.nullOr types.int)) { };
            }
            {
              s = {
                a = 1;
                b = mkIf false 2;
              };
              z.gone = mkIf false 1;
            }
            { s.c = 3; }
          ];
        in
        [
          c.s
          c.z
        ];
      expected = [
        {
          a = 1;
          c = 3;
        }
        { gone = null; }
      ];
    };
    "submodules: attribute names as `name`, defaults, several definitions merged" = {
      actual =
        (eval [
          {
            options.users = opt (types.attrsOf (
              types.submodule (
                { name, config, ... }:
                {
                  options.home = opt types.str "/home/${name}";
                  options.groups = opt (types.listOf types.str) [ ];
                  options.shell = opt types.str "sh";
                  options.summary = opt types.str "${name}: ${config.shell}";
                }
              )
            )) { };
          }
          {
            users.alice.groups = [ "wheel" ];
            users.bob.shell = "zsh";
          }
          { users.alice.groups = [ "mail" ]; }
        ]).users;
      expected = {
        alice = {
          home = "/home/alice";
          # Two reversals: the outer definitions' and the submodule's own.
          groups = [
            "wheel"
            "mail"
          ];
          shell = "sh";
          summary = "alice: sh";
        };
        bob = {
          home = "/home/bob";
          groups = [ ];
          shell = "zsh";
          summary = "bob: zsh";
        };
      };
    };
    "submodules in lists: each element's name and location" = {
      actual =
        (eval [
          {
            options.l = opt (types.listOf (
              types.submodule (
                { name, options, ... }:
                {
                  options.n = opt types.str name;
                  options.loc = opt (types.listOf types.str) options._module.args.loc;
                }
              )
            )) [ ];
          }
          { l = [ { } ]; }
        ]).l;
      expected = [
        {
          n = "[definition 1-entry 1]";
          loc = [
            "l"
            "[definition 1-entry 1]"
            "_module"
            "args"
          ];
        }
      ];
    };
    "freeformType: undeclared settings of a submodule are the freeform type's" = {
      actual =
        (eval [
          {
            options.settings = opt (types.submodule {
              freeformType = types.attrsOf (types.either types.str types.int);
              options.port = opt types.port 25;
            }) { };
          }
          {
            settings = {
              banner = "hello";
              limit = 10;
            };
          }
        ]).settings;
      expected = {
        banner = "hello";
        limit = 10;
        port = 25;
      };
    };
    "the `options` argument: declarations (?), isDefined, highestPrio, files" = {
      actual =
        let
          result = lib.evalModules {
            modules = [
              (
                { options, ... }:
                {
                  options.a = opt types.int 0;
                  # No default: not defined.
                  options.b = mkOption { type = types.int; };
                  options.seen = opt (types.listOf types.bool) [ ];
                  config.seen = [
                    (options ? a)
                    (options ? nope)
                    options.a.isDefined
                    options.b.isDefined
                  ];
                }
              )
              {
                _file = "a-file.nix";
                a = mkDefault 5;
              }
            ];
          };
        in
        [
          result.config.seen
          result.options.a.highestPrio
          result.options.a.files
          result.options.a.value
        ];
      expected = [
        [
          true
          false
          true
          false
        ]
        1000
        [ "a-file.nix" ]
        5
      ];
    };
    "types that take their definitions' values as they are" = {
      actual = eval [
        {
          options = {
            either = opt (types.either types.int (types.listOf types.str)) 0;
            oneOf = opt (types.oneOf [
              types.bool
              types.str
            ]) false;
            nullOr = opt (types.nullOr types.str) "x";
            enum = opt (types.enum [
              "a"
              "b"
            ]) "a";
            positive = opt types.ints.positive 1;
            port = opt types.port 1;
            path = opt types.path "/x";
            pattern = opt (types.strMatching "v=[0-9]+") "v=1";
            package = opt types.package (fakePackage "p");
            nonEmpty = opt (types.nonEmptyListOf types.int) [ 1 ];
            raw = opt types.attrs { };
          };
        }
        (taken // { raw.x = 1; })
        {
          nonEmpty = [ 3 ];
          raw = {
            y = 2;
          };
        }
      ];
      # Two definitions of nonEmpty and raw: concatenated, joined.
      expected = taken // {
        nonEmpty = [
          3
          2
        ];
        raw = {
          x = 1;
          y = 2;
        };
      };
    };
    "anything: attribute sets merged deeply, equal values agree" = {
      actual =
        (eval [
          { options.a = opt types.anything { }; }
          {
            a = {
              x.y = 1;
              s = "same";
            };
          }
          {
            a = {
              x.z = 2;
              s = "same";
            };
          }
        ]).a;
      expected = {
        x = {
          y = 1;
          z = 2;
        };
        s = "same";
      };
    };
    "renamed, removed and changed options: still accepted, and they say so" = {
      actual =
        let
          c = eval [
            nixosLike
            {
              options.new.name = opt types.str "default";
              options.new.level = opt types.str "none";
              options.kept = opt types.int 0;
            }
            (lib.mkRenamedOptionModule [ "old" "name" ] [ "new" "name" ])
            (lib.mkRemovedOptionModule [ "gone" ] "Use kept instead.")
            (lib.mkChangedOptionModule [ "flag" ] [ "new" "level" ] (c: if c.flag then "high" else "low"))
            {
              old.name = "renamed";
              gone = 1;
              flag = true;
            }
          ];
        in
        {
          inherit (c.new) name level;
          failing = map (a: builtins.substring 0 57 a.message) (
            builtins.filter (a: !a.assertion) c.assertions
          );
          warnings = map (builtins.substring 0 40) c.warnings;
        };
      expected = {
        name = "renamed";
        level = "high";
        failing = [ "The option definition `gone' in `<unknown-file>' no longe" ];
        warnings = [
          "The option `flag' defined in `<unknown-f"
          "The option `old.name' defined in `<unkno"
        ];
      };
    };
    "one option declared in two modules: one type, one default, submodules joined" = {
      actual = eval [
        { options.a = mkOption { type = types.str; }; }
        { options.a = opt types.str "default"; }
        { options.s = opt (types.submodule { options.x = opt types.int 1; }) { }; }
        { options.s = mkOption { type = types.submodule { options.y = opt types.int 2; }; }; }
      ];
      expected = {
        a = "default";
        s = {
          x = 1;
          y = 2;
        };
      };
    };
    "descriptions of types, as error messages quote them" = {
      actual =
        with types;
        map (t: t.description) [
          str
          bool
          int
          ints.positive
          ints.unsigned
          port
          ints.u8
          ints.u32
          (ints.between 1 5)
          path
          package
          lines
          commas
          (separatedString " ")
          attrs
          anything
          unspecified
          raw
          nonEmptyStr
          (strMatching "v=.*")
          (enum [
            "a"
            "b"
          ])
          (enum [ "a" ])
          (enum [ ])
          (listOf str)
          (listOf (nullOr str))
          (attrsOf (listOf str))
          (lazyAttrsOf int)
          (nullOr (listOf str))
          (either str int)
          (oneOf [
            str
            int
            bool
          ])
          (nonEmptyListOf str)
          (submodule { })
          (nullOr (either str int))
          (listOf (either str int))
          (attrsOf (submodule { }))
          (either (listOf str) (attrsOf str))
          (nullOr (enum [
            "x"
            "y"
          ]))
          (listOf (enum [
            "x"
            "y"
          ]))
          float
          number
          numbers.positive
          (nullOr numbers.positive)
        ];
      expected = [
        "string"
        "boolean"
        "signed integer"
        "positive integer, meaning >0"
        "unsigned integer, meaning >=0"
        "16 bit unsigned integer; between 0 and 65535 (both inclusive)"
        "8 bit unsigned integer; between 0 and 255 (both inclusive)"
        "32 bit unsigned integer; between 0 and 4294967295 (both inclusive)"
        "integer between 1 and 5 (both inclusive)"
        "absolute path"
        "package"
        "strings concatenated with \"\\n\""
        "strings concatenated with \",\""
        "strings concatenated with \" \""
        "attribute set"
        "anything"
        "unspecified value"
        "raw value"
        "non-empty string"
        "string matching the pattern v=.*"
        "one of \"a\", \"b\""
        "value \"a\" (singular enum)"
        "impossible (empty enum)"
        "list of string"
        "list of (null or string)"
        "attribute set of list of string"
        "lazy attribute set of signed integer"
        "null or (list of string)"
        "string or signed integer"
        "string or signed integer or boolean"
        "non-empty (list of string)"
        "submodule"
        "null or string or signed integer"
        "list of (string or signed integer)"
        "attribute set of (submodule)"
        "(list of string) or attribute set of string"
        "null or one of \"x\", \"y\""
        "list of (one of \"x\", \"y\")"
        "floating point number"
        "signed integer or floating point number"
        "positive integer or floating point number, meaning >0"
        "null or (positive integer or floating point number, meaning >0)"
      ];
    };
    "mkPackageOption: the package of that name in pkgs" = {
      actual =
        (eval [
          { options.p = lib.mkPackageOption { hello = fakePackage "hello"; } "hello" { }; }
        ]).p;
      expected = fakePackage "hello";
    };
  };

  # Evaluations that must fail; `expected` begins nixpkgs' error message.
  failures =
    let
      fails = expected: value: { inherit expected value; };
      declared = type: { options.a = mkOption { inherit type; }; };
      wrongType =
        type: value: description:
        fails "A definition for option `a' is not of type `${description}'."
          (eval [
            (declared type)
            { a = value; }
          ]).a;
    in
    {
      undeclared =
        fails "The option `b' does not exist."
          (eval [
            (declared types.int)
            { b = 1; }
          ]).a;
      undeclaredNested =
        fails "The option `x.y.z' does not exist."
          (eval [
            { options.x.y.a = opt types.int 1; }
            { x.y.z = 1; }
          ]).x;
      undeclaredInSubmodule =
        fails "The option `s.alice.shel' does not exist."
          (eval [
            {
              options.s = opt (types.attrsOf (types.submodule { options.shell = opt types.str "sh"; })) { };
            }
            { s.alice.shel = "zsh"; }
          ]).s.alice.shell;
      undeclaredUnderMkIf =
        fails "The option `b' does not exist."
          (eval [
            (declared types.int)
            (mkIf false { b = 1; })
          ]).a;
      str = wrongType types.str 1 "string";
      int = wrongType types.int "1" "signed integer";
      bool = wrongType types.bool "yes" "boolean";
      listOf = wrongType (types.listOf types.str) "a" "list of string";
      listElement =
        fails "A definition for option `a.\"[definition 1-entry 2]\"' is not of type `signed integer'."
          (eval [
            (declared (types.listOf types.int))
            {
              a = [
                1
                "2"
              ];
            }
          ]).a;
      attrsOf = wrongType (types.attrsOf types.int) [ ] "attribute set of signed integer";
      attrsElement =
        fails "A definition for option `a.x' is not of type `signed integer'."
          (eval [
            (declared (types.attrsOf types.int))
            { a.x = "1"; }
          ]).a;
      enum = wrongType (types.enum [
        "acme"
        "files"
      ]) "other" ''one of "acme", "files"'';
      nullOr = wrongType (types.nullOr types.int) "x" "null or signed integer";
      positive = wrongType types.ints.positive 0 "positive integer, meaning >0";
      positiveNumber = wrongType types.numbers.positive (
        -0.5
      ) "positive integer or floating point number, meaning >0";
      number = wrongType types.number "15" "signed integer or floating point number";
      port = wrongType types.port 70000 "16 bit unsigned integer; between 0 and 65535 (both inclusive)";
      path = wrongType types.path "relative/path" "absolute path";
      strMatching =
        wrongType (types.strMatching "v=spf1.*") "mx -all"
          "string matching the pattern v=spf1.*";
      package = wrongType types.package "hello" "package";
      submodule = wrongType (types.submodule { }) "x" "submodule";
      freeformSubmodule = wrongType (types.submodule {
        freeformType = types.attrsOf types.str;
      }) "x" "open submodule of attribute set of string";
      conflicting =
        fails "The option `a' has conflicting definition values:"
          (eval [
            (declared types.str)
            { a = "x"; }
            { a = "y"; }
          ]).a;
      readOnly =
        fails "The option `a' is read-only, but it's set multiple times."
          (eval [
            {
              options.a = mkOption {
                type = types.int;
                default = 1;
                readOnly = true;
              };
            }
            { a = 2; }
          ]).a;
      noValue =
        fails "The option `a' was accessed but has no value defined."
          (eval [ (declared types.int) ]).a;
      mkIfNotBool =
        fails "‘mkIf’ called with a non-Boolean condition"
          (eval [
            (declared types.int)
            { a = mkIf "yes" 1; }
          ]).a;
      nullAndNot =
        fails "The option `a` is defined both null and not null"
          (eval [
            (declared (types.nullOr types.int))
            { a = null; }
            { a = 1; }
          ]).a;
      unique =
        fails "The option `a' is defined multiple times while it's expected to be unique."
          (eval [
            (declared types.package)
            { a = fakePackage "one"; }
            { a = fakePackage "two"; }
          ]).a;
      declaredTwice =
        fails "The option `a' in `one.nix' is already declared in `two.nix'."
          (eval [
            {
              _file = "one.nix";
              options.a = opt types.int 1;
            }
            {
              _file = "two.nix";
              options.a = opt types.int 2;
            }
          ]).a;
      declaredTwiceOtherType =
        fails "The option `a' in `one.nix' is already declared in `two.nix'."
          (eval [
            {
              _file = "one.nix";
              options.a = mkOption { type = types.int; };
            }
            {
              _file = "two.nix";
              options.a = mkOption { type = types.str; };
            }
          ]).a;
      removedIsRead =
        fails "The option `gone' can no longer be used since it's been removed."
          (eval [
            nixosLike
            (lib.mkRemovedOptionModule [ "gone" ] "")
          ]).gone;
    };

  results = lib.mapAttrsToList (
    name: c:
    if c.actual == c.expected then
      name
    else
      throw "minilib test `${name}': expected ${builtins.toJSON c.expected}, got ${builtins.toJSON c.actual}"
  ) cases;
  # Each failure must fail (its message is checked by tests/nix-checks.sh).
  refused = lib.mapAttrsToList (
    name: f:
    if (builtins.tryEval (builtins.deepSeq f.value true)).success then
      throw "minilib test failures.${name}: evaluated, but must fail with: ${f.expected}"
    else
      name
  ) failures;
in
{
  summary =
    builtins.deepSeq (results ++ refused)
      "minilib: ${toString (builtins.length results)} cases gave nixpkgs' values, ${toString (builtins.length refused)} evaluations failed as they must";
  inherit failures;
  # What tests/nix-checks.sh evaluates one by one, each to fail with an error
  # that contains `expected`: --json -A expectedErrors
  expectedErrors = lib.mapAttrsToList (name: f: {
    attr = "failures.${name}.value";
    inherit (f) expected;
  }) failures;
}
