#!/usr/bin/env python3
"""Checks the workspace's `rust-version` against the locked dependencies.

`rust-version` in Cargo.toml is a promise to users: it must be at least the highest
`rust-version` any locked dependency declares (today the AWS smithy crates), or a user on the
stated toolchain gets a build error deep in a dependency. It must also not exceed the toolchain
CI builds with, or the promise is untested. Reads `cargo metadata` (the lock, for this platform).
"""
import json
import re
import subprocess
import sys


def parse(v):
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3]) + (0,) * (3 - len(re.findall(r"\d+", v)[:3]))


def main():
    host = re.search(r"host: (\S+)", subprocess.check_output(["rustc", "-vV"], text=True)).group(1)
    meta = json.loads(
        subprocess.check_output(
            ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", host],
            text=True,
        )
    )
    members = set(meta["workspace_members"])
    declared = {p["rust_version"] for p in meta["packages"] if p["id"] in members}
    if len(declared) != 1 or None in declared:
        sys.exit(f"every workspace crate must inherit one rust-version, found {sorted(map(str, declared))}")
    ours = declared.pop()
    deps = [
        (parse(p["rust_version"]), p["name"], p["version"], p["rust_version"])
        for p in meta["packages"]
        if p["id"] not in members and p.get("rust_version")
    ]
    need, name, version, raw = max(deps)
    rustc = parse(subprocess.check_output(["rustc", "--version"], text=True).split()[1])
    if parse(ours) < need:
        sys.exit(f"rust-version = \"{ours}\" is too low: {name} {version} (locked) needs rustc {raw}")
    if parse(ours) > rustc:
        sys.exit(f"rust-version = \"{ours}\" is above the toolchain that builds it here ({'.'.join(map(str, rustc))})")
    print(f"rust-version {ours}: covers every locked dependency (highest: {name} {version} needs {raw}); built with rustc {'.'.join(map(str, rustc))}")


if __name__ == "__main__":
    main()
