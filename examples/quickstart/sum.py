"""Reads a list of numbers (JSON) on stdin and writes their sum to $HOPPER_OUTPUT."""
import json
import os
import sys

numbers = json.load(sys.stdin)
if not isinstance(numbers, list):
    sys.exit(f"expected a list of numbers, got {type(numbers).__name__}")
print(f"adding {len(numbers)} numbers")
with open(os.environ["HOPPER_OUTPUT"], "w") as out:
    json.dump({"sum": sum(numbers), "count": len(numbers)}, out)
