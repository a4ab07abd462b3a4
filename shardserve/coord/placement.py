"""Where shards run: how many, on which CPUs, in which mode.

``--shards auto`` is the CPUs this process may use (its affinity mask), capped by a
cgroup CPU quota when one is set (containers).  A ``Placement`` lists one
``ShardSpec`` per shard; the helpers build the common layouts from /sys topology.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import SHARD_MODES, Config
from ..errors import ConfigError

SYS = Path("/sys")
MAX_CPU = 65535
PROC = Path("/proc")


@dataclass(frozen=True)
class ShardSpec:
    """One shard: its index (= its listener's index), the CPUs it may run on, its mode."""

    index: int
    cpus: tuple[int, ...] | None = None
    mode: str = "process"


@dataclass
class Placement:
    shards: list[ShardSpec] = field(default_factory=list)
    pinned: bool = False

    def __len__(self) -> int:
        return len(self.shards)

    @classmethod
    def on_cpus(cls, cpus: list[int], *, pin: bool = True, mode: str = "process") -> Placement:
        """One shard per CPU in ``cpus``, pinned to it."""
        return cls(
            [ShardSpec(i, (cpu,) if pin else tuple(cpus), mode) for i, cpu in enumerate(cpus)],
            pinned=pin,
        )

    @classmethod
    def every_cpu(cls, *, mode: str = "process") -> Placement:
        """A pinned shard on every CPU this process may use."""
        return cls.on_cpus(usable_cpus(), mode=mode)

    @classmethod
    def physical_cores(cls, *, mode: str = "process", sys_root: Path = SYS) -> Placement:
        """A pinned shard per physical core: the first CPU of each SMT sibling group."""
        return cls.on_cpus(physical_core_cpus(usable_cpus(), sys_root), mode=mode)

    @classmethod
    def numa_node(cls, node: int, *, mode: str = "process", sys_root: Path = SYS) -> Placement:
        """A pinned shard on each usable CPU of one NUMA node."""
        cpus = [c for c in node_cpus(node, sys_root) if c in set(usable_cpus())]
        if not cpus:
            raise ConfigError(f"NUMA node {node} has no CPU this process may use")
        return cls.on_cpus(cpus, mode=mode)


# Counting CPUs ---------------------------------------------------------------------------


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def parse_cpu_list(text: str) -> list[int]:
    """'0-3,8' -> [0, 1, 2, 3, 8] (the kernel's cpulist format)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        first, sep, last = part.partition("-")
        try:
            lo = int(first)
            hi = int(last) if sep else lo
        except ValueError:
            raise ConfigError(f"--cpus {text!r}: {part!r} is not a CPU number or range") from None
        if lo < 0 or hi < lo:
            raise ConfigError(f"--cpus {text!r}: bad range {part!r}")
        if hi > MAX_CPU:
            raise ConfigError(f"--cpus {text!r}: there is no CPU {hi}")
        cpus.extend(range(lo, hi + 1))
    if not cpus:
        raise ConfigError(f"--cpus {text!r}: no CPUs")
    return list(dict.fromkeys(cpus))


def cgroup_cpu_limit(
    proc_root: Path = PROC, cgroup_root: Path = SYS / "fs" / "cgroup"
) -> float | None:
    """CPUs allowed by a CFS quota on this process's cgroup or its ancestors, if any."""
    limits = []
    try:
        lines = (proc_root / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            limits += _v2_limits(cgroup_root, path)
        elif "cpu" in controllers.split(","):
            limits += _v1_limits(cgroup_root, controllers, path)
    return min(limits) if limits else None


def _ancestors(base: Path, path: str) -> list[Path]:
    parts = [p for p in path.split("/") if p]
    return [base.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _v2_limits(root: Path, path: str) -> list[float]:
    limits = []
    for directory in _ancestors(root, path):
        try:
            quota, period = (directory / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota != "max":
            try:
                limits.append(int(quota) / int(period))
            except (ValueError, ZeroDivisionError):
                pass
    return limits


def _v1_limits(root: Path, controllers: str, path: str) -> list[float]:
    limits = []
    for mount in (root / controllers, root / "cpu", root / "cpu,cpuacct"):
        for directory in _ancestors(mount, path):
            try:
                quota = int((directory / "cpu.cfs_quota_us").read_text())
                period = int((directory / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                continue
            if quota > 0 and period > 0:
                limits.append(quota / period)
        if limits:
            break
    return limits


def auto_shard_count(cpus: list[int] | None = None) -> tuple[int, str]:
    """How many shards ``--shards auto`` means here, and why (for the start-up log)."""
    usable = cpus if cpus is not None else usable_cpus()
    count = len(usable)
    reason = f"{count} usable CPU{'s' if count != 1 else ''}"
    limit = cgroup_cpu_limit()
    if limit is not None and math.ceil(limit) < count:
        count = max(1, math.ceil(limit))
        reason += f", capped by the cgroup CPU quota of {limit:g}"
    return count, reason


# Topology ----------------------------------------------------------------------------------


def physical_core_cpus(cpus: list[int], sys_root: Path = SYS) -> list[int]:
    """The first CPU of each SMT sibling group among ``cpus``."""
    chosen: list[int] = []
    covered: set[int] = set()
    for cpu in cpus:
        if cpu in covered:
            continue
        siblings_file = sys_root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
        try:
            siblings = parse_cpu_list((siblings_file / "thread_siblings_list").read_text())
        except (OSError, ConfigError):
            siblings = [cpu]
        covered.update(siblings)
        chosen.append(cpu)
    return chosen


def node_cpus(node: int, sys_root: Path = SYS) -> list[int]:
    path = sys_root / "devices" / "system" / "node" / f"node{node}" / "cpulist"
    try:
        return parse_cpu_list(path.read_text())
    except OSError:
        raise ConfigError(f"no NUMA node {node} here") from None


# From the configuration -----------------------------------------------------------------


def resolve_placement(config: Config, given: Placement | None = None) -> tuple[Placement, str]:
    """The shards to run, checked against what this process may use; and why that many."""
    usable = usable_cpus()
    if given is not None:
        for spec in given.shards:
            if spec.mode not in SHARD_MODES:
                raise ConfigError(f"shard {spec.index}: unknown mode {spec.mode!r}")
            _check_usable(spec.cpus or (), usable, f"shard {spec.index}'s CPUs")
        placement, reason = given, "placement given"
    else:
        cpus = parse_cpu_list(config.cpus) if config.cpus else usable
        _check_usable(cpus, usable, f"--cpus {config.cpus}")
        if config.shards == "auto":
            if config.cpus:
                count, reason = len(cpus), f"{len(cpus)} CPUs in --cpus"
            else:
                count, reason = auto_shard_count()
        else:
            count, reason = int(config.shards), f"--shards {config.shards}"
        if config.pin:
            if count > len(cpus):
                raise ConfigError(f"--pin: {count} shards but only {len(cpus)} CPUs to pin them to")
            specs = [ShardSpec(i, (cpus[i],), config.shard_mode) for i in range(count)]
        else:
            spread = tuple(cpus) if config.cpus else None
            specs = [ShardSpec(i, spread, config.shard_mode) for i in range(count)]
        placement = Placement(specs, pinned=config.pin)
    if any(spec.mode == "subinterpreter" for spec in placement.shards):
        from ..interpreters import require

        require()  # or the one line saying what this Python lacks
        config.check_subinterpreter_settings()
    if config.reuseport_steering == "cpu":
        if config.uds is not None or config.fd is not None:
            raise ConfigError("--reuseport-steering cpu needs TCP listeners, not --uds or --fd")
        if any(spec.cpus != (spec.index,) for spec in placement.shards):
            raise ConfigError(
                "--reuseport-steering cpu needs shard i pinned to CPU i: "
                f"--pin --cpus 0-{len(placement) - 1}"
            )
    return placement, reason


def _check_usable(cpus, usable: list[int], what: str) -> None:
    bad = sorted(set(cpus) - set(usable))
    if bad:
        raise ConfigError(
            f"{what}: CPU {','.join(map(str, bad))} is not usable by this process "
            f"(usable: {format_cpu_list(usable)})"
        )


def format_cpu_list(cpus: list[int]) -> str:
    """[0, 1, 2, 3, 8] -> '0-3,8'."""
    parts: list[tuple[int, int]] = []
    for cpu in sorted(set(cpus)):
        if parts and parts[-1][1] == cpu - 1:
            parts[-1] = (parts[-1][0], cpu)
        else:
            parts.append((cpu, cpu))
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in parts)
