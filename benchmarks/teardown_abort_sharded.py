"""The teardown abort (docs/distributed.md, "Teardown") in the sharded test's gloo job.

Runs the two-rank job of tests/test_peer_regressions.py (SHARD_SCRIPT) N times, alternating
the script as it was at git revision BEFORE and as it is now, and counts the runs in which a
rank did not exit 0. The abort shows as a return code of -6 (SIGABRT) with "terminate called
without an active exception" in that rank's output.

    python benchmarks/teardown_abort_sharded.py [N=150] [BEFORE=29c6c47]

Run it with the interpreter of the torch to test (the abort was seen under torch 2.11).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/test_peer_regressions.py"


def shard_script(source: str) -> str:
    start = source.index('SHARD_SCRIPT = textwrap.dedent(r"""')
    end = source.index('""")', start) + len('""")')
    namespace: dict = {"textwrap": textwrap}
    exec(source[start:end], namespace)
    return namespace["SHARD_SCRIPT"]


def run_once(script: str) -> list[tuple[int, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "shard.py").write_text(script)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1")
        procs = [subprocess.Popen([sys.executable, str(tmp / "shard.py"), str(rank),
                                   str(tmp / "store"), str(tmp / "out.pt")],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for rank in range(2)]
        return [(p.returncode, out.decode()[-300:])
                for p, out in ((p, p.communicate(timeout=300)[0]) for p in procs)]


def main(n: int, before: str) -> None:
    old = subprocess.run(["git", "show", f"{before}:{TEST}"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    scripts = {"before": shard_script(old), "now": shard_script((ROOT / TEST).read_text())}
    failed = dict.fromkeys(scripts, 0)
    for i in range(1, n + 1):
        for which, script in scripts.items():
            ranks = run_once(script)
            if any(rc != 0 for rc, _ in ranks):
                failed[which] += 1
                print(f"{i} {which}: return codes {[rc for rc, _ in ranks]}:",
                      " | ".join(log.strip() for rc, log in ranks if rc != 0), flush=True)
        print(f"{i} runs each, failed: {failed}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 150,
         sys.argv[2] if len(sys.argv) > 2 else "29c6c47")
