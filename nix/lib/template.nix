# postmaster's own templates (supervisor/src/render/templates), filled the way
# supervisor/src/render/template.rs fills them: every @NAME@ replaced, and a
# placeholder left over is an error (the template gained one the caller does not
# know). Builtins only, like the helpers that use it (dkim.nix, inbound.nix).
let
  templates = ../../supervisor/src/render/templates;
in
file: values:
let
  text = builtins.replaceStrings (map (name: "@${name}@") (
    builtins.attrNames values
  )) (builtins.attrValues values) (builtins.readFile (templates + "/${file}"));
  left = builtins.filter builtins.isList (builtins.split "@([A-Z_]+)@" text);
in
if left == [ ] then
  text
else
  throw "nix/lib: supervisor/src/render/templates/${file} has placeholders its caller does not fill: ${builtins.concatStringsSep ", " (map builtins.head left)}"
