#!/usr/bin/env bash
# The Nix side of postmaster, checked where no nixpkgs and no binary cache can be
# had (Debian 12 or 13, root): every .nix file parses, is formatted (nixfmt) and has
# no dead code (deadnix); the files they name exist; the builtins-only helpers in
# nix/lib pass their tests and the accounts file they render is filled, parsed and
# (with a build of postmaster at hand) accepted by `postmaster check`; the flake has
# its outputs; the VM tests' Python scripts pass pyflakes and mypy (as the NixOS test
# driver checks them); and nix/module.nix is evaluated with evalModules
# (nix/tests/module-eval.nix) by minilib, the project's own builtins-only module
# system (nix/tests/eval/minilib, with its unit tests): every VM test's mail node,
# every NixOS example of README.md and the module's own checks and refusals,
# against the project's stubs of nixpkgs' postfix, mail, dovecot, rspamd, unbound
# and redis modules (nix/tests/eval/stubs), for both generations of the dovecot
# module; and the module's TLS front units (postmaster-tls.socket and .service)
# are compared key by key with units/postmaster-tls.{socket,service}.
#
# NixOS VM tests need nixpkgs and KVM: they run with `nix flake check` elsewhere.
#
# Installs what it needs itself, and only once: nix-bin (nix-instantiate),
# python3-pyflakes and python3-mypy from Debian; nixfmt (crates.io: nixfmt_rs) and deadnix
# (crates.io) into /var/cache/postmaster-tools (POSTMASTER_TOOLS_CACHE). Never uses
# a Nix binary cache or the network for Nix.
#
# Optional (a developer's machine; CI has no nixpkgs):
#   POSTMASTER_NIXPKGS_LIB=/path/to/nixpkgs.lib (a checkout of nix-community/nixpkgs.lib
#     or nixpkgs) runs minilib's unit tests and module-eval.nix under nixpkgs' lib
#     too (the same values, the same errors), and compares a JSON snapshot of every
#     configuration's rendered values under both libs: any drift of minilib fails;
#   POSTMASTER_NIXPKGS_MODULES=DIR, with POSTMASTER_NIXPKGS_LIB, evaluates
#     module-eval.nix once more against nixpkgs' real modules, with nixpkgs' lib
#     and with minilib, and compares the two snapshots and refusals there too, and
#     checks that the stubs declare exactly the real modules' options (paths and
#     types, nix/tests/eval/option-tree.nix):
#     each subdirectory of DIR is one generation and holds
#     nixos/modules/services/mail/{postfix,mail,dovecot,rspamd}.nix and, optionally,
#     nixos/modules/services/{networking/unbound,databases/redis}.nix (the stubs
#     stand in for a missing one; never commit them);
#   POSTMASTER_NIX_INSTANTIATE: the command for the evaluations with nixpkgs' lib,
#     when the nix-instantiate here is too old for it (it needs Nix 2.18 or newer;
#     Debian 12 has 2.8; minilib's always run with the one here), e.g.
#     "chroot /srv/trixie nix-instantiate" with this tree, the lib and DIR mounted
#     at the same paths inside (and /proc).
#
# Ends with the line `nix checks: N passed, M failed`; exits 1 when M > 0.
set -euo pipefail
cd "$(dirname "$0")/.."

NIXFMT_VERSION=0.5.3   # crates.io nixfmt_rs; installs the binary `nixfmt`
DEADNIX_VERSION=1.3.1  # crates.io deadnix
cache=${POSTMASTER_TOOLS_CACHE:-/var/cache/postmaster-tools}

# Nix without a daemon, a binary cache or a store: parsing and evaluating only.
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes\nstore = dummy://'
export NIX_REMOTE=
export NO_COLOR=1  # deadnix's report, readable in CI logs
export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in tests/scenarios
# Debian's python3 (3.11+: tomllib), as ./test-all uses it; not a pyenv shim.
python=/usr/bin/python3
[ -x "$python" ] || python=python3

step() { printf '\n==> %s\n' "$*"; }

# ---- tools ---------------------------------------------------------------------------

step "tools"
if ! command -v nix-instantiate >/dev/null; then
  echo "installing nix-bin from Debian"
  export DEBIAN_FRONTEND=noninteractive
  # Without recommends: no nix-daemon units (nix-setup-systemd).
  apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends nix-bin \
    || { apt-get -o DPkg::Lock::Timeout=300 update -q \
         && apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends nix-bin; }
fi
nix-instantiate --version
# pyflakes and mypy, for the VM tests' Python scripts (the NixOS test driver runs
# both on them before it boots anything).
if ! "$python" -c 'import pyflakes, mypy' 2>/dev/null; then
  echo "installing python3-pyflakes and python3-mypy from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends python3-pyflakes python3-mypy \
    || { apt-get -o DPkg::Lock::Timeout=300 update -q \
         && apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends python3-pyflakes python3-mypy; }
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9   # two runs at once install once
install_crate() {  # crate version binary
  local crate=$1 version=$2 bin=$3
  if [ -x "$cache/bin/$bin" ] && grep -q "^\"$crate $version " "$cache/.crates.toml" 2>/dev/null; then
    return
  fi
  command -v cargo >/dev/null || { echo "cargo is needed to install $crate (rustup.rs)" >&2; exit 1; }
  echo "installing $crate $version from crates.io into $cache (once)"
  cargo install --quiet --locked --root "$cache" --version "$version" "$crate"
}
install_crate nixfmt_rs "$NIXFMT_VERSION" nixfmt
install_crate deadnix "$DEADNIX_VERSION" deadnix
flock -u 9
nixfmt=$cache/bin/nixfmt
deadnix=$cache/bin/deadnix
echo "nixfmt (nixfmt_rs $NIXFMT_VERSION), deadnix $("$deadnix" --version | awk '{print $NF}')"

# ---- checks --------------------------------------------------------------------------

passed=0
failed=0
failures=()
work=$(mktemp -d /tmp/postmaster-nix-checks.XXXXXX)
trap 'rm -rf "$work"' EXIT

# check NAME COMMAND...: runs COMMAND; its output is shown only when it fails.
check() {
  local name=$1
  shift
  if "$@" >"$work/out" 2>&1; then
    passed=$((passed + 1))
    printf 'ok    %s\n' "$name"
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAIL  %s\n' "$name"
    sed 's/^/      /' "$work/out"
  fi
}

mapfile -t nix_files < <(
  find . \( -path ./.git -o -path ./target -o -path ./tests/bed/.cache -o -name 'result*' \) -prune \
    -o -type f -name '*.nix' -print | sed 's|^\./||' | sort
)
echo "${#nix_files[@]} .nix files: ${nix_files[*]}"

step "parse (nix-instantiate --parse)"
for f in "${nix_files[@]}"; do
  check "parse $f" nix-instantiate --parse "$f"
done

step "format (nixfmt --check)"
for f in "${nix_files[@]}"; do
  check "nixfmt $f" "$nixfmt" --check "$f"
done

step "dead code (deadnix --fail)"
for f in "${nix_files[@]}"; do
  check "deadnix $f" "$deadnix" --fail "$f"
done

step "files the Nix code reads exist"
# Path literals (nix-instantiate --parse makes them absolute), and the files of
# units/ that nix/module.nix reads by name.
paths_exist() {
  local f p missing=0
  for f in "${nix_files[@]}"; do
    while read -r p; do
      [ -e "$p" ] || { echo "$f names $p, which does not exist"; missing=1; }
    done < <(nix-instantiate --parse "$f" | grep -o "$PWD/[A-Za-z0-9._/+-]*" | sort -u)
  done
  while read -r p; do
    [ -e "units/$p" ] || { echo "nix/module.nix reads units/$p, which does not exist"; missing=1; }
  done < <(grep -o 'unitsDir + "/[^"]*"' nix/module.nix | sed 's|.*"/\(.*\)"|\1|')
  return "$missing"
}
check "path literals and units/ files" paths_exist

step "evaluate the builtins-only helpers"
check "nix/tests/lib-eval.nix" nix-instantiate --eval --strict nix/tests/lib-eval.nix -A summary

# The accounts file for declared accounts: rendered by Nix, filled by the unit's
# script from hash files (here: the seed's public example hash), parsed as TOML.
# (`check` runs it inside an `if`, where `set -e` does not apply: hence `|| return 1`.)
# A build of postmaster in target/ (release first), or nothing.
postmaster_build() {
  local candidate
  for candidate in target/release/postmaster target/debug/postmaster; do
    if [ -x "$candidate" ]; then
      echo "$candidate"
      return 0
    fi
  done
}

fill_accounts() {
  local dir=$work/fill hash pm=""
  mkdir -p "$dir/credentials" || return 1
  nix-instantiate --eval --strict --json nix/tests/lib-eval.nix --argstr workDir "$dir" >"$dir/eval.json" || return 1
  hash=$(sed -n 's/^password = "\(.*\)"$/\1/p' examples/seed/accounts.toml | head -n1)
  [ -n "$hash" ] || { echo "no hash in examples/seed/accounts.toml"; return 1; }
  "$python" - "$dir" "$hash" <<'EOF' || return 1
import json, sys, pathlib
d, h = pathlib.Path(sys.argv[1]), sys.argv[2]
e = json.loads((d / "eval.json").read_text())
(d / "accounts.template.toml").write_text(e["template"])
(d / "fill.sh").write_text(e["script"])
for name in e["mailboxes"]:
    (d / "credentials" / f"hash-{name}").write_text(h + "\n")
EOF
  CREDENTIALS_DIRECTORY=$dir/credentials bash "$dir/fill.sh" || return 1
  "$python" - "$dir/accounts.toml" "$hash" <<'EOF' || return 1
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    a = tomllib.load(f)
h = sys.argv[2]
assert sorted(a["mailboxes"]) == ["anna", "carl", "first.last", "thomas"], a["mailboxes"].keys()
assert all(m["password"] == h for m in a["mailboxes"].values()), "a hash was not filled in"
assert a["mailboxes"]["anna"] == {"password": h, "quota": "50M", "send_as": ["@example.net"]}, a["mailboxes"]["anna"]
assert a["mailboxes"]["carl"]["disabled"] is True
assert a["aliases"] == {"info@example.net": "anna", "postmaster": "thomas", "sales@example.org": ["thomas", "anna"]}
assert a["catch_all"] == {"example.org": "thomas"}
print("accounts.toml parses and holds what was declared")
EOF
  # A hash file with a second line is refused, and nothing is written.
  printf 'x\ny\n' >"$dir/credentials/hash-anna"
  rm -f "$dir/accounts.toml"
  if CREDENTIALS_DIRECTORY=$dir/credentials bash "$dir/fill.sh"; then
    echo "a two-line hash file was accepted"
    return 1
  fi
  [ ! -e "$dir/accounts.toml" ] || { echo "a refused fill still wrote the file"; return 1; }
  printf '%s\n' "$hash" >"$dir/credentials/hash-anna"
  CREDENTIALS_DIRECTORY=$dir/credentials bash "$dir/fill.sh" || return 1
  # With a build of postmaster at hand, it must accept the result as well.
  pm=$(postmaster_build)
  if [ -z "$pm" ]; then
    echo "(no build of postmaster in target/: postmaster check not run)"
    return 0
  fi
  printf 'host_name = "mail.example.org"\ndomains = ["example.org", "example.net"]\naccounts_file = "accounts.toml"\nstate_dir = "%s/state"\n' \
    "$dir" >"$dir/config.toml"
  "$pm" --config "$dir/config.toml" check || return 1
}
check "declared accounts: rendered, filled from hash files, parsed" fill_accounts

# render_as DIR NAME LINES...: `postmaster render` into DIR/out-NAME, with the
# seed's host and domains and LINES (TOML) added to its configuration.
render_as() {
  local dir=$1 name=$2 pm hash
  shift 2
  pm=$(postmaster_build)
  hash=$(sed -n 's/^password = "\(.*\)"$/\1/p' examples/seed/accounts.toml | head -n1)
  printf '[mailboxes.thomas]\npassword = "%s"\n' "$hash" >"$dir/accounts.toml"
  printf '%s\n' 'host_name = "mail.example.org"' 'domains = ["example.org", "example.net"]' \
    "accounts_file = \"$dir/accounts.toml\"" "state_dir = \"$dir/state\"" \
    "generated_dir = \"$dir/state/generated\"" '[tls]' 'source = "files"' \
    'cert = "/etc/ssl/mail/fullchain.pem"' 'key = "/etc/ssl/mail/key.pem"' "$@" >"$dir/config.toml"
  rm -rf "$dir/out-$name"
  "$pm" --config "$dir/config.toml" render --out "$dir/out-$name" >/dev/null
}

# lib_eval_for_render NAME: lib-eval.nix's attribute NAME (what a nix/lib helper
# gives, with workDir $work/NAME) into $work/NAME/NAME.json, for a comparison
# with `postmaster render` run there. Returns 2, after saying so, when no build
# of postmaster is at hand to compare with.
lib_eval_for_render() {
  local dir=$work/$1
  mkdir -p "$dir" || return 1
  nix-instantiate --eval --strict --json nix/tests/lib-eval.nix --argstr workDir "$dir" -A "$1" >"$dir/$1.json" || return 1
  if [ -z "$(postmaster_build)" ]; then
    echo "(no build of postmaster in target/: not compared with postmaster render)"
    return 2
  fi
}

# DKIM on NixOS as on Debian: what nix/lib/dkim.nix gives the module (rspamd's
# local.d/dkim_signing.conf, main.cf's milter settings, the submission services'
# options) against what `postmaster render` writes, with DKIM on and off, when a
# build of postmaster is at hand.
dkim_as_render() {
  local dir=$work/dkim enabled rc=0
  lib_eval_for_render dkim || rc=$?
  [ "$rc" -ne 2 ] || return 0
  [ "$rc" -eq 0 ] || return 1
  for enabled in true false; do
    render_as "$dir" "$enabled" '[dkim]' "enabled = $enabled" || return 1
  done
  "$python" - "$dir" <<'EOF' || return 1
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
nix = json.loads((d / "dkim.json").read_text())
bad = []
rendered = (d / "out-true/rspamd/local.d/dkim_signing.conf").read_text()
if rendered != nix["signingConf"]:
    bad.append(f"dkim_signing.conf differs:\n--- postmaster render\n{rendered}--- nix/lib/dkim.nix\n{nix['signingConf']}")
rendered = (d / "out-true/rspamd/local.d/settings.conf").read_text()
if rendered != nix["settingsConf"]:
    bad.append(f"settings.conf differs:\n--- postmaster render\n{rendered}--- nix/lib/dkim.nix\n{nix['settingsConf']}")
for enabled, values in (("true", nix["postfixMain"]), ("false", nix["postfixMainOff"])):
    main = (d / f"out-{enabled}/postfix/main.cf").read_text().splitlines()
    for key, value in values.items():
        line = f"{key} = {value}".rstrip()
        if not any(l.rstrip() == line for l in main):
            found = [l for l in main if l.startswith(f"{key} ")]
            bad.append(f"main.cf (dkim enabled = {enabled}): no `{line}` (render has {found})")
# master.cf: the -o options of each service.
services: dict[str, list[str]] = {}
current = None
for l in (d / "out-true/postfix/master.cf").read_text().splitlines():
    if l and not l[0].isspace() and not l.startswith("#"):
        current = l.split()[0]
        services[current] = []
    elif current and l.strip().startswith("-o "):
        services[current].append(l.strip()[3:])
for svc in ("submission", "submissions"):
    for key, value in nix["submissionOptions"].items():
        if f"{key}={value}" not in services.get(svc, []):
            bad.append(f"master.cf: {svc} has no -o {key}={value} ({services.get(svc)})")
print("\n".join(bad) or "nix/lib/dkim.nix gives what postmaster render writes (DKIM on and off)")
sys.exit(1 if bad else 0)
EOF
}
check "DKIM: nix/lib/dkim.nix as postmaster render (dkim_signing.conf, settings.conf, main.cf, master.cf)" dkim_as_render

# The checks of port 25 on NixOS as on Debian: what nix/lib/inbound.nix gives the
# module (rspamd's local.d files and override.d/options.inc, main.cf's
# inbound_milters, the smtp service's options) against what `postmaster render`
# writes, with the checks on (scores 20 and 5.5) and off.
inbound_as_render() {
  local dir=$work/inbound enabled rc=0
  lib_eval_for_render inbound || rc=$?
  [ "$rc" -ne 2 ] || return 0
  [ "$rc" -eq 0 ] || return 1
  for enabled in true false; do
    render_as "$dir" "$enabled" '[inbound]' "enabled = $enabled" 'reject_score = 20' 'add_header_score = 5.5' || return 1
  done
  render_as "$dir" nolearn '[inbound]' 'learning = false' || return 1
  render_as "$dir" dovecot23 '[dovecot]' 'version = "2.3"' || return 1
  "$python" - "$dir" <<'EOF' || return 1
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
nix = json.loads((d / "inbound.json").read_text())
bad = []
nix["locals"].update(nix["resolverLocals"])
for sub, files in (("local.d", nix["locals"]), ("override.d", nix["overrides"])):
    for name, text in files.items():
        rendered = (d / f"out-true/rspamd/{sub}/{name}").read_text()
        if rendered != text:
            bad.append(f"{sub}/{name} differs:\n--- postmaster render\n{rendered}--- nix/lib/inbound.nix\n{text}")
# Every rspamd file of the checks that render writes, the module writes too
# (dkim.nix gives dkim_signing.conf and settings.conf; the worker is the module's own).
others = {"local.d/dkim_signing.conf", "local.d/settings.conf", "override.d/worker-proxy.inc"}
# Learning from Junk: classifier-bayes.conf, with learning on (Debian's store;
# the module gives its own socket) and off; the scripts and the programs they
# pipe to (with Debian's rspamc); dovecot.conf's IMAPSieve block, for 2.4 and 2.3.
for enabled, files in (("true", nix["bayesLocals"]), ("nolearn", nix["bayesLocalsOff"])):
    for name, text in files.items():
        rendered = (d / f"out-{enabled}/rspamd/local.d/{name}").read_text()
        if rendered != text:
            bad.append(f"local.d/{name} ({enabled}) differs:\n--- postmaster render\n{rendered}--- nix/lib/inbound.nix\n{text}")
nix["locals"].update(nix["bayesLocals"])
for name, text in nix["learningFiles"].items():
    rendered = (d / f"out-true/{name}").read_text()
    if rendered != text:
        bad.append(f"{name} differs:\n--- postmaster render\n{rendered}--- nix/lib/inbound.nix\n{text}")
for version, out in (("2.4", "out-true"), ("2.3", "out-dovecot23")):
    if nix["dovecotLearning"][version] not in (d / f"{out}/dovecot/dovecot.conf").read_text():
        bad.append(f"dovecot {version}: postmaster render's dovecot.conf lacks nix/lib/inbound.nix's IMAPSieve block:\n{nix['dovecotLearning'][version]}")
for f in sorted((d / "out-true/rspamd").rglob("*")):
    rel = f.relative_to(d / "out-true/rspamd")
    ours = nix["locals"] if rel.parts[0] == "local.d" else nix["overrides"]
    if f.is_file() and str(rel) not in others and rel.name not in ours:
        bad.append(f"postmaster render writes rspamd/{rel}, nix/lib/inbound.nix does not")
for enabled, values in (("true", nix["postfixMain"]), ("false", nix["postfixMainOff"])):
    main = (d / f"out-{enabled}/postfix/main.cf").read_text().splitlines()
    for key, value in values.items():
        line = f"{key} = {value}".rstrip()
        if not any(l.rstrip() == line for l in main):
            found = [l for l in main if l.startswith(f"{key} ")]
            bad.append(f"main.cf (inbound enabled = {enabled}): no `{line}` (render has {found})")
smtp, current = [], None
for l in (d / "out-true/postfix/master.cf").read_text().splitlines():
    if l and not l[0].isspace() and not l.startswith("#"):
        current = l.split()[:2]
    elif current == ["smtp", "inet"] and l.strip().startswith("-o "):
        smtp.append(l.strip()[3:])
want = [f"{k}={v}" for k, v in nix["smtpOptions"].items()]
if smtp != want:
    bad.append(f"master.cf: smtp (25) has -o {smtp}, nix/lib/inbound.nix gives {want}")
print("\n".join(bad) or f"nix/lib/inbound.nix gives what postmaster render writes ({len(nix['locals'])} local.d "
      "files, override.d/options.inc, main.cf, master.cf; checks on and off; learning's scripts, programs and "
      "dovecot.conf block for 2.4 and 2.3, Bayes with learning on and off)")
sys.exit(1 if bad else 0)
EOF
}
check "inbound: nix/lib/inbound.nix as postmaster render (rspamd's files, main.cf, master.cf)" inbound_as_render

# Password guessing on NixOS as on Debian: the auth policy block of dovecot.conf
# that nix/lib/logins.nix gives the module (services.dovecot2.includeFiles)
# against the one `postmaster render` writes in its place (between "## Password
# guessing" and the passdb), byte for byte, for 2.4 and 2.3 with limits and an
# address other than the defaults, and with the guard off.
logins_as_render() {
  local dir=$work/logins limits rc=0
  lib_eval_for_render logins || rc=$?
  [ "$rc" -ne 2 ] || return 0
  [ "$rc" -eq 0 ] || return 1
  limits=('[logins]' 'block_after_failures = 3' 'failure_window_seconds = 60' 'block_seconds = 120'
    'policy_address = "127.0.0.2:10099"')
  render_as "$dir" 2.4 '[dovecot]' 'version = "2.4"' "${limits[@]}" || return 1
  render_as "$dir" 2.3 '[dovecot]' 'version = "2.3"' "${limits[@]}" || return 1
  render_as "$dir" off '[logins]' 'block_after_failures = 0' || return 1
  "$python" - "$dir" <<'EOF' || return 1
import json, pathlib, re, sys
d = pathlib.Path(sys.argv[1])
nix = json.loads((d / "logins.json").read_text())
bad = []
def block(out):
    conf = (d / out / "dovecot/dovecot.conf").read_text()
    m = re.search(r"\n## Password guessing\n(.*?)\n# One file, two roles", conf, re.S)
    return m.group(1) if m else f"(no auth policy block in {out}/dovecot/dovecot.conf)"
for version, text in nix["policy"].items():
    rendered = block(f"out-{version}")
    if rendered != text:
        bad.append(f"dovecot {version}: the auth policy block differs:\n--- postmaster render\n{rendered}--- nix/lib/logins.nix\n{text}")
rendered = block("out-off")
if rendered != nix["off"]:
    bad.append(f"guard off: the block differs:\n--- postmaster render\n{rendered}--- nix/lib/logins.nix\n{nix['off']}")
if "auth_policy" in (d / "out-off/dovecot/dovecot.conf").read_text():
    bad.append("guard off: postmaster render's dovecot.conf still has an auth_policy setting")
print("\n".join(bad) or "nix/lib/logins.nix gives dovecot's auth policy block as postmaster render writes it (2.4 and 2.3; off)")
sys.exit(1 if bad else 0)
EOF
}
check "logins: nix/lib/logins.nix as postmaster render (dovecot.conf's auth policy block)" logins_as_render

# The flake's outputs, without nixpkgs: a stub with just what the outputs
# function touches before any value is asked for.
check "flake.nix: outputs for both systems, nixosModules.default exists" \
  nix-instantiate --eval --strict --expr '
    let
      flake = import ./flake.nix;
      nixpkgs.lib.genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
      outputs = flake.outputs { self = outputs; inherit nixpkgs; };
      want = [ "checks" "devShells" "formatter" "nixosModules" "overlays" "packages" ];
      systems = [ "aarch64-linux" "x86_64-linux" ];
    in
    assert builtins.attrNames outputs == want;
    assert builtins.all (o: builtins.attrNames outputs.${o} == systems) [ "checks" "devShells" "formatter" "packages" ];
    assert builtins.pathExists outputs.nixosModules.default;
    assert builtins.isString flake.inputs.nixpkgs.url;
    "ok"'

step "the VM tests' Python: test scripts pass pyflakes and mypy (as the NixOS test driver checks them)"
# The driver declares its functions and the machines before the script, with
# types (nixos/lib/test-script-prepend.py); so does this prelude, for the part of
# the driver's Machine the scripts use. mypy runs as the driver runs it.
check_scripts() {
  local dir=$work/scripts
  mkdir -p "$dir" || return 1
  nix-instantiate --eval --strict --json nix/tests/test-scripts.nix >"$dir/scripts.json" || return 1
  "$python" - "$dir" <<'EOF' || return 1
import json, pathlib, subprocess, sys
d = pathlib.Path(sys.argv[1])
prelude = """\
from typing import Callable, ContextManager, Optional


class Machine:
    def start(self, allow_reboot: bool = False) -> None: raise NotImplementedError
    def succeed(self, *commands: str, timeout: Optional[int] = None) -> str: raise NotImplementedError
    def fail(self, *commands: str, timeout: Optional[int] = None) -> str: raise NotImplementedError
    def wait_until_succeeds(self, command: str, timeout: int = 900) -> str: raise NotImplementedError
    def wait_until_fails(self, command: str, timeout: int = 900) -> str: raise NotImplementedError
    def wait_for_unit(self, unit: str, user: Optional[str] = None, timeout: int = 900) -> None: raise NotImplementedError
    def wait_for_open_port(self, port: int, addr: str = "localhost", timeout: int = 900) -> None: raise NotImplementedError
    def wait_for_file(self, filename: str, timeout: int = 900) -> None: raise NotImplementedError
    def systemctl(self, q: str, user: Optional[str] = None) -> tuple[int, str]: raise NotImplementedError
    def execute(self, command: str, check_return: bool = True, check_output: bool = True, timeout: Optional[int] = 900) -> tuple[int, str]: raise NotImplementedError
    def shutdown(self) -> None: raise NotImplementedError


start_all: Callable[[], None]
subtest: Callable[[str], ContextManager[None]]
"""
bad = 0
mypy = ["mypy", "--no-implicit-optional", "--pretty", "--no-color-output", "--no-error-summary",
        "--cache-dir", str(d / ".mypy_cache")]
for name, test in sorted(json.loads((d / "scripts.json").read_text()).items()):
    # pyflakes wants values; mypy, types.
    untyped = "start_all = subtest = None\n" + "".join(f"{m} = None\n" for m in test["machines"])
    typed = prelude + "".join(f"{m}: Machine\n" for m in test["machines"])
    for tool, head in ((["pyflakes"], untyped), (mypy, typed)):
        script = d / f"{name}.{tool[0]}.py"
        script.write_text(head + test["script"])
        r = subprocess.run([sys.executable, "-m", *tool, str(script)], capture_output=True, text=True)
        print(f"{name}: {tool[0]}: {'ok' if r.returncode == 0 else 'FAILED'}")
        if r.returncode != 0:
            bad = 1
            print(r.stdout + r.stderr)
sys.exit(bad)
EOF
}
check "nix/tests/*.nix test scripts (pyflakes, mypy)" check_scripts

step "the VM tests' Python (compiles; probe.py runs against the bed's mailclient.py)"
for f in nix/tests/scenarios/*.py; do
  check "python3 compiles $f" "$python" -c 'import sys; compile(open(sys.argv[1]).read(), sys.argv[1], "exec")' "$f"
done
check "nix/tests/scenarios/probe.py --help" env PYTHONPATH=tests/scenarios "$python" nix/tests/scenarios/probe.py --help

# ---- the module with evalModules ----------------------------------------------------
# minilib (nix/tests/eval/minilib) is the project's own builtins-only module system
# and lib, so this runs everywhere; with POSTMASTER_NIXPKGS_LIB the same files run
# under nixpkgs' lib as well, and what they see is compared.

minilib=$PWD/nix/tests/eval/minilib
real_nixi=(nix-instantiate)
[ -n "${POSTMASTER_NIX_INSTANTIATE:-}" ] && read -r -a real_nixi <<<"$POSTMASTER_NIX_INSTANTIATE"
nixpkgs_lib=""
# nix_with LIB ARGS...: nix-instantiate with `lib` given: minilib with the
# nix-instantiate here, nixpkgs' lib with POSTMASTER_NIX_INSTANTIATE's.
nix_with() {
  local which=$1
  shift
  if [ "$which" = minilib ]; then
    nix-instantiate --arg lib "import $minilib" "$@"
  else
    "${real_nixi[@]}" --arg lib "import $nixpkgs_lib" "$@"
  fi
}
# Read-write, with a store of its own: the README's examples are written into
# the store to be imported (builtins.toFile).
module_eval() {  # LIB ARGS...
  local which=$1
  shift
  nix_with "$which" --read-write-mode --option store "$work/store" --eval --strict \
    "$PWD/nix/tests/module-eval.nix" "$@"
}
# expected_errors LIB FILE [ARGS...]: every {attr, expected} of FILE's
# expectedErrors fails to evaluate, with an error that contains `expected`
# (nixpkgs' wording).
expected_errors() {
  local which=$1 file=$2 attr expected n=0 bad=0
  shift 2
  nix_with "$which" --read-write-mode --option store "$work/store" --eval --strict --json \
    "$file" "$@" -A expectedErrors >"$work/errors.json" || return 1
  while IFS=$'\t' read -r attr expected; do
    n=$((n + 1))
    if nix_with "$which" --read-write-mode --option store "$work/store" --eval --strict \
      "$file" "$@" -A "$attr" >/dev/null 2>"$work/error.txt"; then
      echo "$attr: evaluated, but must fail with: $expected"
      bad=1
    elif ! grep -qF -- "$expected" "$work/error.txt"; then
      echo "$attr: failed, but not with: $expected"
      tail -n 5 "$work/error.txt" | sed 's/^/    /'
      bad=1
    fi
  done < <("$python" -c 'import json, sys
for e in json.load(open(sys.argv[1])): print(e["attr"] + "\t" + e["expected"])' "$work/errors.json")
  [ "$bad" -eq 0 ] && echo "$n evaluations failed, each with nixpkgs' message"
  [ "$n" -gt 0 ] && [ "$bad" -eq 0 ]
}

step "minilib: its unit tests (nix/tests/eval/minilib/tests.nix)"
check "minilib: the values nixpkgs' lib gives" \
  nix-instantiate --eval --strict nix/tests/eval/minilib/tests.nix -A summary
check "minilib: the errors nixpkgs' lib gives (undeclared options, wrong types, conflicts, ...)" \
  expected_errors minilib "$PWD/nix/tests/eval/minilib/tests.nix"

step "nix/module.nix with minilib's evalModules: stubs of nixpkgs' mail modules"
check "nix/tests/module-eval.nix with minilib (stubs, both dovecot generations)" \
  module_eval minilib -A summary
check "nix/tests/module-eval.nix with minilib: undeclared options and wrong types are refused" \
  expected_errors minilib "$PWD/nix/tests/module-eval.nix"

# The TLS front on NixOS as on Debian: the module's postmaster-tls.socket and
# postmaster-tls.service (evaluated, both dovecot generations) say what
# units/postmaster-tls.{socket,service} say, key by key, the binary's path aside.
front_as_units() {
  local dir=$work/front f
  mkdir -p "$dir" || return 1
  for f in units/postmaster-tls.socket units/postmaster-tls.service; do
    [ -e "$f" ] || { echo "$f does not exist: the module's TLS front has nothing to agree with"; return 1; }
  done
  cat >"$dir/front.nix" <<NIX
{ lib }:
builtins.mapAttrs (
  _: g:
  let
    systemd = g.configurations."declared accounts".systemd;
  in
  {
    socket = systemd.sockets.postmaster-tls;
    service = systemd.services.postmaster-tls;
  }
) (import $PWD/nix/tests/module-eval.nix { inherit lib; }).snapshot
NIX
  nix_with minilib --read-write-mode --option store "$work/store" --eval --strict --json \
    "$dir/front.nix" >"$dir/front.json" || return 1
  "$python" - "$dir/front.json" <<'EOF' || return 1
import json, pathlib, sys

def debian(path):
    """The unit file's settings: {section: {key: [value per line]}}."""
    sections, current = {}, {}
    for raw in pathlib.Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections

def nixos(kind, unit):
    """The same shape, from the module's evaluated unit."""
    sections = {"Unit": {"Description": unit["description"]}}
    for key, attr in (("Requires", "requires"), ("After", "after")):
        if attr in unit:
            sections["Unit"][key] = unit[attr]
    if "wantedBy" in unit:
        sections["Install"] = {"WantedBy": unit["wantedBy"]}
    if kind == "socket":
        sections["Socket"] = {"ListenStream": unit["listenStreams"], **unit["socketConfig"]}
    else:
        sections["Service"] = dict(unit["serviceConfig"])
    return sections

def norm(value):
    """One string per key, as systemd reads it (a list is one line each; yes/no)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " ".join(norm(v) for v in value)
    return str(value)

def binary_aside(command):
    return command.split("/bin/postmaster ", 1)[-1]

bad = []
for generation, units in json.load(open(sys.argv[1])).items():
    for kind in ("socket", "service"):
        theirs = debian(f"units/postmaster-tls.{kind}")
        ours = nixos(kind, units[kind])
        for section in sorted(set(theirs) | set(ours)):
            a, b = theirs.get(section, {}), ours.get(section, {})
            for key in sorted(set(a) | set(b)):
                want = " ".join(a[key]) if key in a else None
                got = norm(b[key]) if key in b else None
                if key == "ExecStart" and want and got:
                    want, got = binary_aside(want), binary_aside(got)
                if want != got:
                    bad.append(f"{generation}: postmaster-tls.{kind} [{section}] {key}: units/ has {want!r}, the module {got!r}")
print("\n".join(bad) or "the module's postmaster-tls.socket and .service say what units/ says (both dovecot generations)")
sys.exit(1 if bad else 0)
EOF
}
check "TLS front: the module's postmaster-tls.socket and .service as units/postmaster-tls.{socket,service}" front_as_units

if [ -n "${POSTMASTER_NIXPKGS_LIB:-}" ]; then
  nixpkgs_lib=$POSTMASTER_NIXPKGS_LIB
  [ -e "$nixpkgs_lib/lib/default.nix" ] && nixpkgs_lib=$nixpkgs_lib/lib
  nixpkgs_lib=$(realpath "$nixpkgs_lib")
  "${real_nixi[@]}" --version
  step "minilib against nixpkgs' lib ($nixpkgs_lib): the same tests, the same results"
  check "minilib's unit tests under nixpkgs' lib: its values" \
    nix_with nixpkgs --eval --strict "$PWD/nix/tests/eval/minilib/tests.nix" -A summary
  check "minilib's unit tests under nixpkgs' lib: its errors" \
    expected_errors nixpkgs "$PWD/nix/tests/eval/minilib/tests.nix"
  check "nix/tests/module-eval.nix with nixpkgs' lib (stubs, both dovecot generations)" \
    module_eval nixpkgs -A summary
  check "nix/tests/module-eval.nix with nixpkgs' lib: undeclared options and wrong types are refused" \
    expected_errors nixpkgs "$PWD/nix/tests/module-eval.nix"
  # Every configuration's rendered values (config.toml, main.cf and master.cf
  # settings, dovecot's settings, rspamd's workers and files, systemd units,
  # tmpfiles, users, polkit, D-Bus, assertions, warnings) and every check's
  # observed value: minilib must give exactly what nixpkgs' lib gives.
  same_snapshot() {  # [ARGS...] for module-eval.nix
    module_eval minilib --json -A snapshot "$@" >"$work/snapshot-minilib.json" || return 1
    module_eval nixpkgs --json -A snapshot "$@" >"$work/snapshot-nixpkgs.json" || return 1
    "$python" - "$work/snapshot-minilib.json" "$work/snapshot-nixpkgs.json" <<'EOF' || return 1
import json, sys
mini, real = (json.load(open(p)) for p in sys.argv[1:3])
diffs = []
def walk(path, a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                diffs.append(f"{path}/{k}: only under {'nixpkgs' if k not in a else 'minilib'}'s lib")
            else:
                walk(f"{path}/{k}", a[k], b[k])
    elif a != b:
        diffs.append(f"{path}:\n    minilib: {json.dumps(a)[:300]}\n    nixpkgs: {json.dumps(b)[:300]}")
walk("", mini, real)
n = sum(len(g["configurations"]) for g in real.values())
c = sum(len(g["checks"]) for g in real.values())
print("\n".join(diffs[:20]) or f"identical: {n} configurations and {c} checks' values in {len(real)} generations ({len(json.dumps(real))} bytes of JSON)")
sys.exit(1 if diffs else 0)
EOF
  }
  check "minilib and nixpkgs' lib: every configuration renders the same (JSON snapshot)" same_snapshot
  if [ -n "${POSTMASTER_NIXPKGS_MODULES:-}" ]; then
    modules=(--argstr mailModulesDir "$(realpath "$POSTMASTER_NIXPKGS_MODULES")")
    generations=$(ls "$POSTMASTER_NIXPKGS_MODULES" | paste -sd ' ')
    step "nix/module.nix against nixpkgs' real mail modules ($POSTMASTER_NIXPKGS_MODULES: $generations)"
    check "nix/tests/module-eval.nix (nixpkgs' lib, nixpkgs' modules)" module_eval nixpkgs -A summary "${modules[@]}"
    check "nix/tests/module-eval.nix (nixpkgs' lib, nixpkgs' modules): refusals" \
      expected_errors nixpkgs "$PWD/nix/tests/module-eval.nix" "${modules[@]}"
    # minilib on nixpkgs' own modules (which use more of lib than the stubs):
    # the same values, the same refusals.
    check "nix/tests/module-eval.nix (minilib, nixpkgs' modules)" module_eval minilib -A summary "${modules[@]}"
    check "nix/tests/module-eval.nix (minilib, nixpkgs' modules): refusals" \
      expected_errors minilib "$PWD/nix/tests/module-eval.nix" "${modules[@]}"
    check "minilib and nixpkgs' lib on nixpkgs' modules: every configuration renders the same (JSON snapshot)" \
      same_snapshot "${modules[@]}"
    # The stubs declare what nixpkgs' modules declare, no more and no less
    # (every option's path and type, submodules' options included), and minilib
    # reads the same tree from them as nixpkgs' lib.
    same_option_trees() {
      local dir g f stubs real
      for dir in "$POSTMASTER_NIXPKGS_MODULES"/*/; do
        g=$(basename "$dir")
        [ -e "nix/tests/eval/stubs/$g.nix" ] || { echo "no stub nix/tests/eval/stubs/$g.nix for $dir"; return 1; }
        stubs="[" real="["
        for f in postfix mail dovecot rspamd; do
          real+=" $(realpath "$dir")/nixos/modules/services/mail/$f.nix"
          [ "$f" = dovecot ] && f=$g
          stubs+=" $PWD/nix/tests/eval/stubs/$f.nix"
        done
        # unbound and redis (Bayes' store), when the generation has them.
        for f in networking/unbound databases/redis; do
          if [ -e "$dir/nixos/modules/services/$f.nix" ]; then
            real+=" $(realpath "$dir")/nixos/modules/services/$f.nix"
            stubs+=" $PWD/nix/tests/eval/stubs/${f#*/}.nix"
          fi
        done
        nix_with nixpkgs --eval --strict --json "$PWD/nix/tests/eval/option-tree.nix" \
          --arg mailModules "$real ]" >"$work/tree-nixpkgs.json" || return 1
        nix_with nixpkgs --eval --strict --json "$PWD/nix/tests/eval/option-tree.nix" \
          --arg mailModules "$stubs ]" >"$work/tree-stubs.json" || return 1
        nix_with minilib --eval --strict --json "$PWD/nix/tests/eval/option-tree.nix" \
          --arg mailModules "$stubs ]" >"$work/tree-stubs-minilib.json" || return 1
        "$python" - "$g" "$work" <<'EOF' || return 1
import json, sys
g, w = sys.argv[1], sys.argv[2]
real, stubs, mini = (set(json.load(open(f"{w}/tree-{k}.json"))) for k in ("nixpkgs", "stubs", "stubs-minilib"))
bad = [f"{g}: the stubs declare {o}, nixpkgs does not" for o in sorted(stubs - real)]
bad += [f"{g}: nixpkgs declares {o}, the stubs do not" for o in sorted(real - stubs)]
bad += [f"{g}: minilib reads {o} from the stubs, nixpkgs' lib does not" for o in sorted(mini ^ stubs)]
print("\n".join(bad) or f"{g}: the same {len(real)} options (paths and types) in the stubs and nixpkgs' modules; the same under minilib")
sys.exit(1 if bad else 0)
EOF
      done
    }
    check "the stubs declare exactly nixpkgs' options, paths and types (both generations)" same_option_trees
  else
    step "nixpkgs' real mail modules: skipped (set POSTMASTER_NIXPKGS_MODULES)"
  fi
else
  step "minilib against nixpkgs' lib: skipped (set POSTMASTER_NIXPKGS_LIB to a nixpkgs.lib checkout)"
fi

printf '\n'
if [ "$failed" -gt 0 ]; then
  printf 'failed: %s\n' "${failures[@]}"
fi
echo "nix checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
