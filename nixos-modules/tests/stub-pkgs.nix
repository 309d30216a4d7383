# The few parts of `pkgs` the module uses, for the evaluation tests:
# `formats.toml` (the type nixpkgs gives it, and a `generate` that renders
# the TOML text in Nix instead of running remarshal, so the tests can hand
# the text to hive-core's own parser), `runCommandLocal`, and a package
# stand-in. Store paths are made up from a hash of their content, so a
# change of the config changes hive-core's ExecStart as it would on NixOS.
{ lib }:
let
  fakeStorePath = name: content:
    "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" content)}-${name}";

  fakeDerivation = name: content: extra: {
    type = "derivation";
    inherit name;
    outPath = fakeStorePath name content;
  } // extra;

  # TOML: scalars and arrays of a table first, then its sub-tables as
  # `[a.b]` sections (the same document remarshal writes, up to layout).
  tomlKey = k: if builtins.match "[A-Za-z0-9_-]+" k != null then k else builtins.toJSON k;
  tomlValue = loc: v:
    if v == null then throw "toml: ${lib.concatStringsSep "." loc} is null, which TOML cannot express"
    else if builtins.isBool v then (if v then "true" else "false")
    else if builtins.isInt v then toString v
    else if builtins.isFloat v then
      (let s = builtins.toJSON v; in if builtins.match "-?[0-9]+" s != null then "${s}.0" else s)
    else if builtins.isString v || builtins.isPath v then builtins.toJSON (toString v)
    else if builtins.isList v then "[" + lib.concatMapStringsSep ", " (tomlValue loc) v + "]"
    else if builtins.isAttrs v then
      "{ " + lib.concatStringsSep ", "
        (lib.mapAttrsToList (k: x: "${tomlKey k} = ${tomlValue (loc ++ [ k ]) x}") v) + " }"
    else throw "toml: ${lib.concatStringsSep "." loc} has a type TOML cannot express";
  tomlTable = loc: attrs:
    let
      isTable = v: builtins.isAttrs v && !(lib.isDerivation v);
      scalars = lib.filterAttrs (_: v: !(isTable v)) attrs;
      tables = lib.filterAttrs (_: isTable) attrs;
      header = lib.optionalString (loc != [ ]) "[${lib.concatMapStringsSep "." tomlKey loc}]\n";
      body = lib.concatStrings
        (lib.mapAttrsToList (k: v: "${tomlKey k} = ${tomlValue (loc ++ [ k ]) v}\n") scalars);
      subs = lib.concatStrings (lib.mapAttrsToList (k: v: "\n" + tomlTable (loc ++ [ k ]) v) tables);
    in
    (if loc != [ ] && scalars == { } && tables != { } then "" else header + body) + subs;
  toTOML = tomlTable [ ];
in
{
  inherit toTOML;

  formats.toml = { }: {
    # As nixpkgs' pkgs/pkgs-lib/formats.nix declares it.
    type =
      let
        valueType = lib.types.nullOr (lib.types.oneOf [
          lib.types.bool
          lib.types.int
          lib.types.float
          lib.types.str
          lib.types.path
          (lib.types.attrsOf valueType)
          (lib.types.listOf valueType)
        ]) // { description = "TOML value"; };
      in
      valueType;
    generate = name: value:
      let text = toTOML value; in fakeDerivation name text { inherit text; };
  };

  runCommandLocal = name: _env: script: fakeDerivation name script { inherit script; };

  hyperhive = fakeDerivation "hyperhive-0.1.0" "hyperhive" { version = "0.1.0"; };
  tailscale = fakeDerivation "tailscale-1.90.0" "tailscale" { version = "1.90.0"; };
  bubblewrap = fakeDerivation "bubblewrap-0.11.0" "bubblewrap" { };
  nftables = fakeDerivation "nftables-1.1.5" "nftables" { };
  iproute2 = fakeDerivation "iproute2-6.17.0" "iproute2" { };
  util-linux = fakeDerivation "util-linux-2.41.2" "util-linux" { };
}
