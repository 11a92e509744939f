#!/usr/bin/env python3
"""Puts one bench/run's outputs into BENCHMARKS.md: the text between
`<!-- bench:NAME -->` and `<!-- /bench:NAME -->` becomes NAME.txt from the run (as a fenced
block), for `machine` and every script that ran. Everything else in the file is kept."""
import pathlib
import re
import sys

run, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
text = target.read_text()
for out in sorted(run.glob("*.txt")):
    name = out.stem
    body = "\n".join(
        line for line in out.read_text().splitlines()
        if not line.startswith(("   Compiling", "    Finished", "    Updating"))
    ).strip()
    block = f"<!-- bench:{name} -->\n```\n{body}\n```\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text += f"\n{block}\n"
target.write_text(text)
