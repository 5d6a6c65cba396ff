"""What the workflows tests share: the Claude Code stand-in, the code test's directories, and
git helpers."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

CLAUDE_CODE_TIMEOUT = 4

# The stand-in for the Claude Code CLI. It takes the message (after `--`) as JSON saying what
# to do, and prints what the real CLI prints with `--output-format stream-json` (plus a plain
# line and a stderr line).
STAND_IN = """\
import json, os, subprocess, sys, time

args = sys.argv[1:]
prompt = args[args.index("--") + 1] if "--" in args else ""
try:
    spec = json.loads(prompt)
except ValueError:
    spec = {}

def out(value):
    print(value if isinstance(value, str) else json.dumps(value), flush=True)

if spec.get("record"):
    with open(spec["record"], "w") as f:
        json.dump({"cwd": os.getcwd(), "argv": args,
                   "api_key": os.environ.get("ANTHROPIC_API_KEY", ""),
                   "env": dict(os.environ)}, f)
out("stand-in: starting")
out({"type": "system", "subtype": "init", "cwd": os.getcwd()})
text = {"type": "text", "text": "I will write hello.txt."}
tool = {"type": "tool_use", "name": "Write", "input": {"file_path": "hello.txt"}}
out({"type": "assistant", "message": {"role": "assistant", "content": [text, tool]}})
print("stand-in: a note on stderr", file=sys.stderr, flush=True)
if spec.get("write"):
    with open(spec["write"], "w") as f:
        f.write("hello from the stand-in\\n")
if spec.get("commit"):
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                    "commit", "-qm", "stand-in commit"], check=True)
if spec.get("pidfile") and not (spec.get("once") and os.path.exists(spec["pidfile"])):
    child = subprocess.Popen(["sleep", "120"])
    with open(spec["pidfile"] + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    os.rename(spec["pidfile"] + ".tmp", spec["pidfile"])
    out("stand-in: working")
    time.sleep(120)
if spec.get("exit"):
    print("fatal: the stand-in gave up", file=sys.stderr, flush=True)
    sys.exit(spec["exit"])
out({"type": "result", "subtype": "success", "is_error": False, "result": "Wrote hello.txt.",
     "usage": {"input_tokens": 120, "output_tokens": 30}, "total_cost_usd": 0.0125})
"""


@dataclass
class CodeEnv:
    allowed: Path  # inside CODE_ALLOWED_ROOTS
    outside: Path  # not
    worktrees: Path  # GIT_WORKTREE_DIR
    cli: Path  # CLAUDE_CODE_PATH


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=30
    )
    return done.stdout.strip()


def make_repository(path: Path) -> Path:
    """A git repository with one commit (README.md) on branch main."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# test repository\n")
    git(path, "add", "README.md")
    git(path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "initial")
    return path
