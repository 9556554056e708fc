"""Reads a name (JSON) on stdin, logs a line, prints the greeting (JSON) on stdout."""
import json
import os
import sys

name = json.load(sys.stdin)
print(f"greeting {name!r}", file=sys.stderr)
json.dump(f"{os.environ.get('GREETING', 'hello')}, {name}!", sys.stdout)
