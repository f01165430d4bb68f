"""Simulated hosts without root: move the run into a user namespace of its own, where it is root.

Host scenarios need CAP_NET_ADMIN to make network namespaces, veths and packet rules. A developer without
root, or a rootless container, usually may still create a *user* namespace; inside one (with its own
network and mount namespaces) the run is root over everything it makes, so the fabric builds there as it
does for real root. Nothing of it is visible outside, and all of it vanishes with the run's last process.

How: before anything runs, `chaos run` checks that it can make a named namespace where it is. If it
cannot, it asks this module's probe (`python -m chaos.hosts.userns --probe`, run under `unshare`) whether
the namespace set-up works; if so it re-executes itself under the same `unshare` command (same pid, same
arguments, `SLOTWIRE_USERNS=1` so it never recurses). If neither works, host scenarios report
`skipped: needs CAP_NET_ADMIN` as before. Costs: inside the namespace the run's Toxiproxy and Redis
listen on the namespace's loopback only, and `--toxiproxy`/`--redis` URLs of servers outside it are not
reachable (they are refused up front).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from chaos.hosts import netns

EXIT_HARNESS_ERROR = 3  # as `chaos run`: the run could not start
ENV = "SLOTWIRE_USERNS"  # set inside the namespace: the run is already in its own user namespace
PROBE_TIMEOUT_S = 20.0
# --keep-caps: the capabilities the run has as root of the new namespace survive unshare's exec even when
# the caller's securebits would drop them (e.g. uid 0 without capabilities in a container).
UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--mount", "--keep-caps", "--"]


class UsernsError(RuntimeError):
    """The user namespace could not be set up; the message says which step failed."""


def inside() -> bool:
    return os.environ.get(ENV) == "1"


def can_make_namespaces() -> str | None:
    """None if a named network namespace can be made here (root, or inside our namespace), else why."""
    name = f"slotwire-probe-{os.getpid()}"
    try:
        netns.create(name)
        netns.remove(name)
    except netns.NetnsError as exc:
        return str(exc)
    return None


def available() -> str | None:
    """None if `unshare` can give this process a user namespace where hosts can be built, else why not."""
    if shutil.which("unshare") is None:
        return "no `unshare` command (util-linux)"
    done = _run([*UNSHARE, sys.executable, "-m", "chaos.hosts.userns", "--probe"])
    if done is None:
        return "the user-namespace probe did not finish"
    if done.returncode != 0:
        return (done.stderr.strip() or f"the user-namespace probe exited {done.returncode}")[-300:]
    return None


def reexec(argv: list[str]) -> None:
    """Replace this process by the same command inside a fresh user namespace (does not return)."""
    os.environ[ENV] = "1"
    os.execvp(UNSHARE[0], [*UNSHARE, sys.executable, "-m", "chaos.hosts.userns", *argv])


def prepare() -> None:
    """Inside the new namespaces: a private /run/netns for `ip netns`, and a loopback that is up."""
    target = netns.RUN_DIR if netns.RUN_DIR.is_dir() else netns.RUN_DIR.parent
    steps = [
        ["mount", "-t", "tmpfs", "-o", "mode=0755", "slotwire-userns", str(target)],
        ["ip", "link", "set", "lo", "up"],
    ]
    for argv in steps:
        done = _run(argv)
        if done is None or done.returncode != 0:
            reason = done.stderr.strip() if done is not None else "did not run"
            raise UsernsError(f"{' '.join(argv)}: {reason}")
    why = can_make_namespaces()
    if why is not None:
        raise UsernsError(why)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def main() -> None:
    """`--probe`: set up and exit 0 (or 1 with the reason); otherwise set up and run the `chaos` CLI."""
    args = sys.argv[1:]
    try:
        prepare()
    except UsernsError as exc:
        print(f"user namespace: {exc}", file=sys.stderr)
        sys.exit(EXIT_HARNESS_ERROR)
    if args[:1] == ["--probe"]:
        return
    os.environ[ENV] = "1"
    from chaos.launcher import main as chaos_main

    sys.argv = ["chaos", *args]
    chaos_main()


if __name__ == "__main__":
    main()
