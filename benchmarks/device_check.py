"""The GPU checks, for a machine with a CUDA device: the device tests (the DMoE layer and
remote experts with inputs on CUDA, servers computing on CUDA, over loopback TCP).

Run from the repository root: ``.venv/bin/python benchmarks/device_check.py``. Without CUDA it
says so and exits 1 (the tests it runs would only be skipped). Final line: JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch


def main() -> int:
    if not torch.cuda.is_available():
        print(json.dumps({"cuda": False, "reason": "torch sees no CUDA device here"}))
        return 1
    tests = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "0",
            "-p",
            "no:cacheprovider",
            "tests/test_moe_device.py",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(tests.stdout[-3000:], tests.stderr[-2000:], sep="\n")
    summary = tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else ""
    print(
        json.dumps(
            {
                "cuda": True,
                "device": torch.cuda.get_device_name(0),
                "torch": torch.__version__,
                "tests_exit": tests.returncode,
                "tests": summary,
            }
        )
    )
    return tests.returncode


if __name__ == "__main__":
    sys.exit(main())
