#!/usr/bin/env python3
"""Rewrite the serving contract's generated files: docs/schemas/*.schema.json and docs/conformance/*.

Run after changing a message type, the features or the exploration; tests/deploy/test_contract.py fails until the
committed files match what the code generates.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.contract import write_contract

if __name__ == "__main__":
    for path in write_contract():
        print(path)
