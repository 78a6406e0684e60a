"""Prints `name==floor` for every dependency of a pyproject (extras included): pip constraints that
install each one at the minimum version the project declares."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def floors(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = [
        *project["dependencies"],
        *(r for extra in project.get("optional-dependencies", {}).values() for r in extra),
    ]
    pins = []
    for requirement in requirements:
        match = re.fullmatch(
            r"([A-Za-z0-9._-]+)(?:\[[^]]*\])?>=([0-9][0-9A-Za-z.]*)(?:,.*)?", requirement.replace(" ", "")
        )
        if not match:
            sys.exit(f"{pyproject}: {requirement!r} declares no floor (name>=version)")
        pins.append(f"{match[1]}=={match[2]}")
    return pins


if __name__ == "__main__":
    print("\n".join(floors(Path(sys.argv[1]))))
