"""--env-file: KEY=VALUE lines into os.environ (existing variables win, as with dotenv)."""

from __future__ import annotations

import os


def load_env_file(path: str) -> dict[str, str]:
    values: dict[str, str] = {}
    with open(path, encoding="utf-8") as file:
        for number, raw in enumerate(file, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export ") :].lstrip()
            key, sep, value = line.partition("=")
            key = key.strip()
            if not sep or not key.replace("_", "").isalnum():
                raise ValueError(f"{path}, line {number}: expected KEY=VALUE")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                quote, value = value[0], value[1:-1]
                if quote == '"':
                    value = value.encode("latin-1", "backslashreplace").decode("unicode_escape")
            elif " #" in value:
                value = value.split(" #", 1)[0].rstrip()
            values[key] = value
    for key, value in values.items():
        os.environ.setdefault(key, value)
    return values
