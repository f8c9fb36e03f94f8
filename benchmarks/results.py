"""Measurements, the table of medians and ratios, the JSON file and the chart."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = (
    "Django",
    "celery",
    "kombu",
    "boto3",
    "botocore",
    "s3transfer",
    "django-storages",
    "moto",
    "redis",
)


@dataclass
class Row:
    """One subject measured in one case of one scenario, with every sample."""

    scenario: str
    case: str
    subject: str
    unit: str
    samples: list[float]
    baseline: str | None = None  # subject of the same scenario and case the ratio is against
    target: str = ""
    ok: bool | None = None
    # Where the target did not hold: the floor, measured in the same run, that
    # the row meets instead (empty when it meets none: the row fails).
    floor: str = ""
    note: str = ""
    ratio: float | None = field(default=None)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


class Results:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, row: Row) -> Row:
        if row.baseline is not None:
            base = self.find(row.scenario, row.case, row.baseline)
            if base.median:
                row.ratio = row.median / base.median
        self.rows.append(row)
        print("  " + format_row(row), flush=True)
        return row

    def find(self, scenario: str, case: str, subject: str) -> Row:
        for row in self.rows:
            if (row.scenario, row.case, row.subject) == (scenario, case, subject):
                return row
        raise LookupError((scenario, case, subject))

    def median(self, scenario: str, case: str, subject: str) -> float:
        return self.find(scenario, case, subject).median

    def verdicts(self) -> list[Row]:
        return [row for row in self.rows if row.ok is not None]


def summary(results: Results) -> str:
    """How many targets hold, then each one at its floor and each one missed."""
    judged = results.verdicts()
    floored = [row for row in judged if not row.ok and row.floor]
    failing = [row for row in judged if not row.ok and not row.floor]
    lines = [f"{len(judged) - len(floored) - len(failing)} of {len(judged)} targets hold."]
    lines += [
        f"  at its floor: {r.scenario} / {r.case} / {r.subject}: {r.target}; {r.floor}" for r in floored
    ]
    lines += [f"  not met: {r.scenario} / {r.case} / {r.subject}: {r.target}" for r in failing]
    return "\n".join(lines)


def verdict(row: Row) -> str:
    """``holds``, ``at its floor: …`` (the target missed, the floor named and met), ``FAILS`` or ``""``."""
    if row.ok is None:
        return ""
    if row.ok:
        return "holds"
    return f"at its floor: {row.floor}" if row.floor else "FAILS"


def _num(value: float, unit: str) -> str:
    if unit in ("requests", "bytes", "files"):
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_row(row: Row) -> str:
    spread = f"{_num(min(row.samples), row.unit)}–{_num(max(row.samples), row.unit)}"
    ratio = f"{row.ratio:.2f}×" if row.ratio is not None else ""
    return (
        f"{row.scenario:<11} {row.case:<22} {row.subject:<38} {_num(row.median, row.unit):>8} "
        f"{spread:>17} {row.unit:<8} n={len(row.samples):<4} {ratio:>8}  {_last(row)} {verdict(row)}"
    ).rstrip()


def _last(row: Row) -> str:
    """The last column: the target, or for a row without one its note."""
    return row.target or row.note


def table(rows: list[Row]) -> str:
    head = (
        f"{'scenario':<11} {'case':<22} {'subject':<38} {'median':>8} {'min–max':>17} {'unit':<8} "
        f"{'n':<6} {'ratio':>8}  target or note"
    )
    return "\n".join([head, "-" * len(head), *(format_row(row) for row in rows)])


def rst_table(rows: list[Row]) -> str:
    """The same table as an RST list-table."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - Scenario",
        "     - Case",
        "     - Subject",
        "     - Median",
        "     - Min–max",
        "     - n",
        "     - Ratio",
        "     - Target or note",
    ]
    for row in rows:
        said = verdict(row).replace("FAILS", "**fails**")
        said = f" — {said}" if said else ""
        cells = [
            row.scenario,
            row.case,
            row.subject,
            f"{_num(row.median, row.unit)} {row.unit}",
            f"{_num(min(row.samples), row.unit)}–{_num(max(row.samples), row.unit)}",
            str(len(row.samples)),
            f"{row.ratio:.2f}×" if row.ratio is not None else "",
            (row.target + said) if row.target else row.note,
        ]
        lines.append(f"   * - {cells[0]}")
        lines.extend(f"     - {cell}" if cell else "     -" for cell in cells[1:])
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    def package(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    keep = ("Architecture", "Model name", "CPU(s)", "Thread(s) per core", "CPU max MHz", "L3 cache")
    cpu = {
        k.strip(): v.strip()
        for k, _, v in (line.partition(":") for line in lscpu.splitlines())
        if k.strip() in keep
    }
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "memory_gib": round(_mem_kib() / 1024 / 1024, 1),
        "packages": {name: package(name) for name in PACKAGES},
    }


def _mem_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def write_json(path: Path, results: Results, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(row), "median": row.median} for row in results.rows]
    path.write_text(json.dumps({**meta, "rows": rows}, indent=1))


def chart(results: Results, path: Path, sizes: list[tuple[str, int]]) -> None:
    """Upload (a model created with its file) latency against file size for each storage, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    styles = {
        "FileSystemStorage": ("tab:green", "o", "-"),
        "QueuedStorage (default settings)": ("tab:blue", "s", "-"),
        "QueuedStorage, inline publish (contrast)": ("tab:blue", "D", ":"),
        "S3Storage direct": ("tab:red", "^", "-"),
        "S3Storage through the WAN link": ("tab:red", "v", "--"),
    }
    drawn = 0
    for subject, (color, marker, line) in styles.items():
        points = []
        for label, size in sizes:
            try:
                points.append((size, results.median("1 upload", label, subject)))
            except LookupError:
                continue
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker=marker, linestyle=line, color=color, label=subject)
            drawn += 1
    if not drawn:
        raise LookupError("no row of scenario 1 to draw: do its subjects match the chart's?")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([size for _, size in sizes], [label for label, _ in sizes])
    ax.minorticks_off()
    ax.set_xlabel("file size")
    ax.set_ylabel("median Model.objects.create(file=...) (ms, log scale)")
    ax.set_title("An upload: queued vs local disk vs synchronous S3 (default settings)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
