# Renders one `systemd.services.<name>` definition into the unit file NixOS
# would write, following nixos/lib/systemd-lib.nix (`attrsToSection`,
# `toOption`) and the service-to-unit mapping of
# nixos/lib/systemd-unit-options.nix: list-valued keys become one line per
# element, booleans `true`/`false`, dependency lists one space-joined line.
{ lib }:
service:
let
  toOption = x: if x == true then "true" else if x == false then "false" else toString x;
  attrsToSection = as: lib.concatStrings (lib.concatLists (lib.mapAttrsToList
    (name: value: map (x: "${name}=${toOption x}\n") (if builtins.isList value then value else [ value ]))
    as));
  deps = key: list: lib.optionalAttrs (list != [ ]) { ${key} = lib.concatStringsSep " " list; };
  unit = { Description = service.description; }
    // deps "After" service.after
    // deps "Before" service.before
    // deps "Requires" service.requires
    // deps "Wants" service.wants
    // deps "BindsTo" service.bindsTo
    // deps "PartOf" service.partOf
    // lib.optionalAttrs (service.restartTriggers != [ ]) {
      X-Restart-Triggers = map toString service.restartTriggers;
    }
    // service.unitConfig;
  environment = lib.mapAttrsToList (k: v: "\"${k}=${v}\"") service.environment;
  serviceSection = lib.optionalAttrs (environment != [ ]) { Environment = environment; }
    // service.serviceConfig;
in
''
  [Unit]
  ${attrsToSection unit}
  [Service]
  ${attrsToSection serviceSection}
  [Install]
  WantedBy=${lib.concatStringsSep " " service.wantedBy}
''
