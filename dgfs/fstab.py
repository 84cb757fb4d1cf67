"""`mount.dgfs`: the helper mount(8) runs for `/etc/fstab` lines of type `dgfs`.

    releases  /mnt/releases  dgfs  _netdev,endpoint_url=http://127.0.0.1:9000,metadata_ttl=30  0 0

mount(8) calls `mount.dgfs SOURCE MOUNTPOINT [-sfnv] -o OPTIONS`; generic options (rw,
_netdev, noauto…) are ignored by `dgfs mount -o`, except suid/nosuid and dev/nodev (default
nosuid,nodev; docs/SEMANTICS.md). For type `fuse.dgfs`, mount.fuse3
runs `dgfs SOURCE MOUNTPOINT -o OPTIONS`, which `dgfs.cli.main` also accepts.
"""

from __future__ import annotations

import sys


def to_mount_argv(argv: list[str]) -> list[str]:
    """mount(8)-style arguments → `dgfs mount` arguments (drops -s/-f/-n/-v)."""
    positional: list[str] = []
    options: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "-o":
            options.append(next(args, ""))
        elif arg.startswith("-o"):
            options.append(arg[2:])
        elif arg in ("-s", "-f", "-n", "-v", "-N") or arg.startswith("-t"):
            continue
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise SystemExit("usage: mount.dgfs SOURCE MOUNTPOINT [-o OPTIONS]")
    out = ["mount", *positional]
    for value in options:
        out += ["-o", value]
    return out


def main() -> None:
    from dgfs.cli import run

    run(args=to_mount_argv(sys.argv[1:]), prog_name="mount.dgfs")
