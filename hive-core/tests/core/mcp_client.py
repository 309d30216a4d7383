"""An independent MCP client for `hive-agent mcp`: the official MCP Python SDK.

Driven by hive-core/tests/core/mcp.rs, which starts the real core and gives
this script the hive-agent binary and alice's agent socket. The script talks
MCP over stdio to `hive-agent mcp` and reports each step as one JSON line on
stdout; where the test must act (answer through hivectl, kill or restart the
core) the script prints the step and waits for one line on stdin.

It asserts nothing itself: the Rust test reads the reports and decides.
"""

import json
import sys
import time

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def report(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


async def wait_for_driver():
    line = await anyio.to_thread.run_sync(sys.stdin.readline)
    return line.strip()


def tool_result(r):
    text = "".join(c.text for c in r.content if getattr(c, "type", "") == "text")
    return {
        "is_error": bool(r.is_error),
        "structured": r.structured_content,
        "text": text,
    }


async def main(hive_agent, socket):
    notes = []
    arrived = anyio.Event()

    async def on_log(params):
        notes.append({"level": params.level, "logger": params.logger, "data": params.data})
        arrived.set()

    server = StdioServerParameters(command=hive_agent, args=["--socket", socket, "mcp"])
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write, logging_callback=on_log) as s:
            init = await s.initialize()
            report(
                "initialized",
                protocol_version=init.protocol_version,
                server=init.server_info.name,
                tools_capability=init.capabilities.tools is not None,
            )

            listed = await s.list_tools()
            report(
                "tools",
                tools=[
                    {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                    for t in listed.tools
                ],
            )

            r = await s.call_tool("whoami", {})
            report("whoami", **tool_result(r))

            r = await s.call_tool("send", {"to": "bob", "body": "hello bob, from MCP"})
            report("sent", **tool_result(r))

            # alice may not message carol: the core refuses.
            r = await s.call_tool("send", {"to": "carol", "body": "not allowed"})
            report("refused", **tool_result(r))

            r = await s.call_tool(
                "ask", {"to": "operator", "question": "Deploy?", "options": ["yes", "no"]}
            )
            asked = tool_result(r)
            report("asked", **asked)
            qid = (asked["structured"] or {}).get("question_id")
            await wait_for_driver()  # the operator answers through hivectl

            # The answer is announced as a notification, and readable by recv.
            def announced_answer():
                for n in notes:
                    m = (n["data"] or {}).get("message") or {}
                    if m.get("kind") == "answer" and m.get("question_id") == qid:
                        return n
                return None

            deadline = time.monotonic() + 30
            while announced_answer() is None and time.monotonic() < deadline:
                with anyio.move_on_after(1):
                    await arrived.wait()
                arrived = anyio.Event()
            r = await s.call_tool("recv", {"wait_ms": 5000})
            got = tool_result(r)
            msgs = (got["structured"] or {}).get("messages") or []
            answer = next((m for m in msgs if m.get("question_id") == qid), None)
            report("answer", notification=announced_answer(), recv=got, answer=answer)
            if answer is not None:
                r = await s.call_tool("ack", {"msg_id": answer["id"]})
                report("acked", **tool_result(r))
                r = await s.call_tool("recv", {})
                report("after_ack", **tool_result(r))

            report("stop_core")
            await wait_for_driver()  # the core is down
            r = await s.call_tool("whoami", {})
            report("while_down", **tool_result(r))

            report("start_core")
            await wait_for_driver()  # the core is back
            deadline = time.monotonic() + 30
            while True:
                r = await s.call_tool("whoami", {})
                if not r.is_error or time.monotonic() > deadline:
                    break
                await anyio.sleep(0.2)
            report("after_restart", **tool_result(r))

            # Arguments the schema forbids are refused before the core.
            try:
                r = await s.call_tool("ack", {"msg_id": "not a number"})
                report("bad_arguments", outcome="result", **tool_result(r))
            except Exception as e:  # a JSON-RPC error is a protocol answer too
                report("bad_arguments", outcome="error", error=str(e))

    # A second session on the newest revision, which has no initialize
    # handshake: discover, then call a tool.
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as s:
            found = await s.discover()
            r = await s.call_tool("whoami", {})
            report(
                "discovered",
                protocol_version=s.protocol_version,
                supported=list(found.supported_versions),
                whoami=tool_result(r),
            )
    report("done")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
