"""The whole HTTP API fuzzed from its own OpenAPI document, against the real mesh.

schemathesis generates requests for every operation (its examples, coverage, fuzzing and
stateful phases, positive and negative data) and checks each answer: no server error except a
503 that names what is down, responses that match the schema (status, content type, headers,
body), 405 with `Allow` for undeclared methods, and every error a google.rpc.Status JSON body
with the request id (fuzz_checks.py). Live streams never end by design and are left out; their
own tests cover them.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

from gateway_helpers import Mesh

CHECKS = (
    "server_errors_are_named_outages",  # fuzz_checks.py
    "errors_are_google_rpc_status",  # fuzz_checks.py
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "allow_header_conformance",
)
# Random cases per operation (positive and negative) in the fuzzing and stateful phases. The
# coverage phase is the systematic part (every parameter's boundary and wrong-typed values),
# the same whatever this is. Measured side by side: 25 made 3,226 cases, the fuzzing and
# stateful phases 66 s of 117; 10 makes 2,634 cases, those phases 17 s.
MAX_EXAMPLES = 10

# Server errors the fuzzer finds in a service (not in the gateway), reported to their owners;
# tolerated only as that service's own INTERNAL error. Entries: "METHOD /path": "why".
KNOWN_UPSTREAM_FAILURES: dict[str, str] = {}


async def test_fuzz_every_route_from_the_openapi_document(mesh: Mesh, tmp_path: Path) -> None:
    command = [
        os.path.join(os.path.dirname(sys.executable), "st"),
        "run",
        f"{mesh.gateway.url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--exclude-path-regex",
        ":stream$",
        "--request-timeout",
        "30",
        "--generation-deterministic",
        "--workers",
        "1",  # in a second thread, Python 3.11.7's AST constructor fails now and then
        # ("AST constructor recursion depth mismatch") inside hypothesis
        "-H",
        "X-Request-Timeout: 20",
        "--continue-on-failure",
        "--warnings",
        "off",
        *os.environ.get("GATEWAY_FUZZ_ARGS", "").split(),
    ]
    env = {
        **os.environ,
        "NO_COLOR": "1",
        "SCHEMATHESIS_HOOKS": str(Path(__file__).with_name("fuzz_checks.py")),
    }
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env=env,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=600)
    text = output.decode(errors="replace")
    (tmp_path / "schemathesis.txt").write_text(text)
    summary = re.search(r"^Test cases:\n(.*)$", text, re.M)
    print("\n" + (summary.group(1).strip() if summary else text[-2000:]))
    _assert_only_known_failures(text, process.returncode)


def _assert_only_known_failures(text: str, returncode: Any) -> None:
    failing = set(re.findall(r"^_+ ((?:[A-Z]+) \S+) _+$", text, re.M))
    unexpected = failing - set(KNOWN_UPSTREAM_FAILURES)
    assert not unexpected, text[-12000:]
    if failing:
        # Only the known upstream defects failed, and as the service's own INTERNAL error.
        assert returncode != 0
        assert "internal error (request id" in text, text[-12000:]
        print("known upstream failures still present:", sorted(failing))
    else:
        assert returncode == 0, text[-12000:]
