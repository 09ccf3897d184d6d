"""docs/DESIGN.md is the specification the code cites: every cited rule exists there, and no
file refers to a specification outside the repository."""

import os
import re
import subprocess

from conftest import REPO

with open(os.path.join(REPO, "docs", "DESIGN.md"), encoding="utf-8") as f:
    DESIGN = f.read()
RULES = set(re.findall(r"^\*\*([A-Z]\d+)\.", DESIGN, flags=re.M))


def tracked_text_files():
    names = subprocess.run(
        ["git", "ls-files"], cwd=REPO, stdout=subprocess.PIPE, text=True, check=True
    ).stdout.split()
    return [n for n in names if n.endswith((".py", ".md", ".yaml", ".cfg", ".toml", "Makefile"))]


def cited_rules(text):
    """Rule numbers cited as 'rule T3', 'rules I1-I7', 'rules I1, M1 and M2' or test_t3_*."""
    cited = set(re.findall(r"\btest_([tlimns]\d)_", text))
    cited = {c.upper() for c in cited}
    for group in re.findall(r"\brules? ((?:[A-Z]\d+(?:-[A-Z]\d+)?(?:, | and )?)+)", text):
        for first, last in re.findall(r"([A-Z]\d+)(?:-([A-Z]\d+))?", group):
            if last:
                letter = first[0]
                cited |= {f"{letter}{n}" for n in range(int(first[1:]), int(last[1:]) + 1)}
            else:
                cited.add(first)
    return cited


def test_design_defines_the_rule_families():
    for family, count in (("N", 5), ("T", 7), ("L", 3), ("I", 7), ("M", 2), ("S", 1)):
        assert {f"{family}{n}" for n in range(1, count + 1)} <= RULES


def test_every_cited_rule_exists():
    missing = {}
    for name in tracked_text_files():
        with open(os.path.join(REPO, name), encoding="utf-8", errors="ignore") as f:
            unknown = cited_rules(f.read()) - RULES
        if unknown:
            missing[name] = sorted(unknown)
    assert missing == {}


def test_no_reference_to_a_specification_outside_the_repository():
    offenders = []
    for name in tracked_text_files():
        with open(os.path.join(REPO, name), encoding="utf-8", errors="ignore") as f:
            if "SOLO" + ".md" in f.read():  # spelled apart so that this file does not match
                offenders.append(name)
    assert offenders == []
