# checks.<system>.vm: a NixOS VM with the module and two agents on the
# nixos-container runtime. It needs Nix with KVM; on the project's Debian
# machines it is only parsed and its flake attribute evaluated against
# stubs (flake-eval.sh) — it has not run there (docs/deploy.md says so).
#
# It asserts: the dashboard answers on loopback and not on the VM's
# external address; /agent/<name>/ renders; the operator answers a question
# and approves a proposal over HTTP; an agent cannot connect to the gateway
# or to the other agent; `systemd-analyze security hive-web` is at most 1.5.
{ pkgs, module }:
pkgs.testers.runNixOSTest {
  name = "hyperhive";
  nodes.host = { pkgs, ... }: {
    imports = [ module ];
    virtualisation.memorySize = 3072;
    virtualisation.cores = 2;
    users.users.operator = { isNormalUser = true; };
    # A test-only token; a real host keeps it outside the store (the
    # module's assertion refuses store paths, so it is written at boot).
    systemd.tmpfiles.rules = [ "f+ /run/secrets/hyperhive-operator-tokens 0600 root root - operator:vm-test-token" ];
    services.hyperhive = {
      enable = true;
      runtime = "nixos-container";
      adminUsers = [ "operator" ];
      web.operatorTokensFile = "/run/secrets/hyperhive-operator-tokens";
      agents.alice = {
        manager = true;
        canProposeFor = [ "bob" ];
        command = [ "hive-agent" "demo" ];
      };
      agents.bob = {
        allowedRecipients = [ "alice" "operator" ];
        command = [ "hive-agent" "demo" ];
        egress = "deny";
      };
    };
  };

  testScript = ''
    import json, re

    host.start()
    host.wait_for_unit("hive-core.service")
    host.wait_for_unit("hive-web.service")
    host.wait_for_open_port(8080, "127.0.0.1")

    with subtest("the dashboard answers on loopback only"):
        host.succeed("curl -fsS http://127.0.0.1:8080/healthz")
        addr = host.succeed("ip -4 -o addr show eth1 | awk '{print $4}' | cut -d/ -f1").strip()
        host.fail(f"curl -fsS --max-time 3 http://{addr}:8080/healthz")

    with subtest("the operator signs in and /agent/<name>/ renders"):
        host.succeed(
            "curl -fsS -c /tmp/jar -b /tmp/jar http://127.0.0.1:8080/login -o /tmp/login.html"
        )
        host.succeed(
            "curl -fsS -c /tmp/jar -b /tmp/jar -H 'Origin: http://127.0.0.1:8080' "
            "--data-urlencode token=vm-test-token http://127.0.0.1:8080/login -o /dev/null"
        )
        host.wait_until_succeeds("hivectl agents | grep -q alice", timeout=300)
        for name in ["alice", "bob"]:
            page = host.succeed(f"curl -fsS -b /tmp/jar http://127.0.0.1:8080/agent/{name}/")
            assert name in page, f"/agent/{name}/ does not name {name}"

    def csrf():
        page = host.succeed("curl -fsS -b /tmp/jar http://127.0.0.1:8080/")
        return re.search(r'name="csrf" value="([^"]+)"', page).group(1)

    with subtest("the operator answers a question over HTTP"):
        # The demo agents ask the operator once per run.
        host.wait_until_succeeds(
            "curl -fsS -b /tmp/jar http://127.0.0.1:8080/api/questions | grep -q '\"id\"'", timeout=300
        )
        q = json.loads(host.succeed("curl -fsS -b /tmp/jar http://127.0.0.1:8080/api/questions"))
        qid = q[0]["id"] if isinstance(q, list) else q["questions"][0]["id"]
        host.succeed(
            f"curl -fsS -b /tmp/jar -H 'Origin: http://127.0.0.1:8080' "
            f"--data-urlencode answer=yes --data-urlencode csrf={csrf()} "
            f"http://127.0.0.1:8080/answer-question/{qid} -o /dev/null"
        )
        host.succeed("hivectl audit | grep -q answer")

    with subtest("the operator approves a proposal over HTTP"):
        # alice (canProposeFor bob) proposes a new agent.toml for bob through
        # her own socket (docs/agent-config.md). The file replaces bob's
        # whole agent.toml; this subtest only follows the approval.
        host.succeed(
            "nixos-container run h-alice -- sh -c "
            "'printf \"allowed_recipients = [\\\"operator\\\"]\\n\" > /tmp/bob.toml && "
            "hive-agent propose-config bob --file agent.toml=/tmp/bob.toml -m \"bob talks to the operator only\"'"
        )
        host.wait_until_succeeds(
            "curl -fsS -b /tmp/jar http://127.0.0.1:8080/api/approvals | grep -q '\"id\"'", timeout=120
        )
        a = json.loads(host.succeed("curl -fsS -b /tmp/jar http://127.0.0.1:8080/api/approvals"))
        aid = a[0]["id"] if isinstance(a, list) else a["approvals"][0]["id"]
        host.succeed(
            f"curl -fsS -b /tmp/jar -H 'Origin: http://127.0.0.1:8080' "
            f"--data-urlencode csrf={csrf()} http://127.0.0.1:8080/approval/{aid}/approve -o /dev/null"
        )
        host.succeed("hivectl audit | grep -q approve")

    with subtest("an agent reaches neither the gateway nor the other agent"):
        gw = host.succeed("ip -4 -o addr show | awk '$2 ~ /^ve-h-alice/ {print $4}' | cut -d/ -f1").strip()
        host.fail(f"nixos-container run h-alice -- curl -fsS --max-time 3 http://{gw}:8080/healthz")
        host.fail("nixos-container run h-alice -- curl -fsS --max-time 3 http://127.0.0.1:8080/healthz")
        bob = host.succeed("nixos-container show-ip h-bob").strip()
        host.fail(f"nixos-container run h-alice -- ping -c1 -W2 {bob}")

    with subtest("hive-web is rated at most 1.5 by systemd-analyze"):
        out = host.succeed("systemd-analyze security hive-web.service --no-pager")
        level = float(re.search(r"Overall exposure level for hive-web.service: ([0-9.]+)", out).group(1))
        assert level <= 1.5, f"hive-web is rated {level}"
        print(host.succeed("systemd-analyze security hive-core.service --no-pager | tail -1"))
  '';
}
