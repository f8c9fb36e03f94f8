#!/usr/bin/env python3
"""One entry point for developers: ``python3 tools/run.py test|demo|bench``.

Needs only ``python3``.  It creates ``.venv``, installs the package with the
extras the command needs (``dev`` for the tests: the test extras plus the
linters, stubs, Sphinx and tox), installs the Debian packages the real services need (as root,
with apt-get; otherwise it says what is missing and stops), then runs.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"

# Debian package -> a binary that proves it is installed.
SYSTEM_PACKAGES = {
    "redis-server": "redis-server",
    "postgresql": "initdb",
}
BROWSER_PACKAGES = {"chromium": "chromium"}
PG_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)

# The supported matrix, stated once: (tox env, interpreter it needs).
MATRIX = [
    ("py310-django52", "python3.10"),
    ("py312-django60", "python3.12"),
    ("py313-django61", "python3.13"),
]


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    printable = " ".join(str(c) for c in cmd)
    print(f"$ {printable}", flush=True)
    result = subprocess.run([str(c) for c in cmd], cwd=ROOT, env={**os.environ, **(env or {})})
    if result.returncode:
        sys.exit(f"FAILED ({result.returncode}): {printable}")


def have(binary: str) -> bool:
    return shutil.which(binary) is not None or any((d / binary).exists() for d in PG_DIRS)


def ensure_system(packages: dict[str, str]) -> None:
    missing = [pkg for pkg, binary in packages.items() if not have(binary)]
    venv_ok = (
        subprocess.run([sys.executable, "-c", "import ensurepip, venv"], capture_output=True).returncode == 0
    )
    if not venv_ok:
        missing.append(f"python3-venv python{sys.version_info.major}.{sys.version_info.minor}-venv")
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(
            "Missing system packages: " + " ".join(missing) + "\n"
            "Install them (sudo apt-get install -y " + " ".join(missing) + ") and run this again; "
            "the tests start these services themselves and never skip them."
        )
    say("Installing " + " ".join(missing))
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "update", "-q", env=env)
    run("apt-get", "install", "-y", "-q", "--no-install-recommends", *" ".join(missing).split(), env=env)
    # Debian starts the services it installs; the tests start their own.
    for service in ("redis-server", "postgresql"):
        subprocess.run(["service", service, "stop"], capture_output=True)


def ensure_disk(need_gib: float) -> None:
    """Stop at once, saying so, when the disk cannot hold what the command installs.

    Without it a full disk shows up minutes later as a pip ``OSError`` deep in a tox log.
    """
    for place in sorted({ROOT, Path(tempfile.gettempdir())}):
        free_gib = shutil.disk_usage(place).free / 2**30
        if free_gib < need_gib:
            sys.exit(
                f"Only {free_gib:.1f} GiB free on the disk of {place}; this command needs about "
                f"{need_gib:.1f} GiB (venvs, test files). Free some space (old .tox or .venv "
                "directories, /tmp) and run it again."
            )


def test_disk_need(with_matrix: bool) -> float:
    """GiB the test command still has to write, from sizes measured on Debian 12 (x86_64)."""
    need = 0.5  # pip's cache, the tests' work directories
    if not all(have(binary) for binary in {**SYSTEM_PACKAGES, **BROWSER_PACKAGES}.values()):
        need += 0.5  # Debian's chromium, redis-server and postgresql with what they pull in
    if not PY.exists():
        need += 1.0  # .venv with the [dev] extras: 0.95 GiB
    if with_matrix:
        need += 0.8 * sum(not (ROOT / ".tox" / env).exists() for env, _ in MATRIX)  # [test]: 0.75 GiB
    return need


def ensure_venv(extras: str) -> None:
    """``.venv`` with the package (editable) and ``extras``; installs only when pyproject.toml changed.

    pip installs uv, and uv the rest: the same packages from PyPI, several
    times faster than pip on a fresh clone.  Compiled to bytecode at install,
    as pip does: a process that may not write ``.pyc`` files
    (``PYTHONDONTWRITEBYTECODE``) would otherwise compile every module it
    imports, and the tests start many.
    """
    if not PY.exists():
        say(f"Creating {VENV.relative_to(ROOT)}")
        run(sys.executable, "-m", "venv", VENV)
    stamp = VENV / f".installed-{extras}"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted:
        return
    say(f"Installing the package with its [{extras}] extras")
    run(PY, "-m", "pip", "install", "-q", "--upgrade", "pip", "uv")
    run(PY, "-m", "uv", "pip", "install", "-q", "--compile-bytecode", "--python", PY, "-e", f".[{extras}]")
    stamp.write_text(wanted)


def ruff() -> None:
    say("ruff")
    run(PY, "-m", "ruff", "check", ".")
    run(PY, "-m", "ruff", "format", "--check", ".")


def types_and_layers() -> None:
    say("mypy and the import layers (import-linter)")
    run(PY, "-m", "mypy", "queued_storage", "tests", "benchmarks")
    run(VENV / "bin" / "lint-imports", "--no-cache")


def docs() -> None:
    say("Documentation (Sphinx, warnings are errors)")
    run(PY, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", "docs/_build/html")


def pytest(*args: str, env: dict[str, str] | None = None) -> None:
    run(PY, "-m", "pytest", *args, env=env)


def find_interpreter(name: str) -> str | None:
    """``name`` on PATH if it runs, else a pyenv build of it (pyenv shims only run the active one)."""
    candidates = [shutil.which(name)]
    candidates += [str(p) for p in sorted(Path.home().glob(f".pyenv/versions/*/bin/{name}"), reverse=True)]
    for path in filter(None, candidates):
        if subprocess.run([path, "-c", "pass"], capture_output=True).returncode == 0:
            return path
    return None


def matrix_command() -> tuple[list[str | Path], dict[str, str]]:
    """The tox run of the supported matrix, and its environment variables.

    Exits, saying what to install, when an interpreter is missing.
    """
    envs, found, missing = [], [], []
    for env, interpreter in MATRIX:
        path = find_interpreter(interpreter)
        if path:
            envs.append(env)
            found.append(path)
        else:
            missing.append(f"{env} ({interpreter} not found)")
    if missing:
        # The matrix is the support promise: an env that cannot run fails the command.
        sys.exit(
            f"Cannot run the supported matrix here: {', '.join(missing)}. Install the missing "
            "interpreters (e.g. `pyenv install 3.10`), or run `python3 tools/run.py test --no-matrix`."
        )
    # tox-uv asks uv for each interpreter by version: it finds the ones found
    # here on PATH, and never downloads one of its own instead.  Bytecode is
    # compiled at install, as for .venv.
    dirs = dict.fromkeys(str(Path(path).parent) for path in found)
    path = os.pathsep.join([*dirs, os.environ.get("PATH", "")])
    return [PY, "-m", "tox", "run-parallel", "-p", "2", "-e", ",".join(envs)], {
        "PATH": path,
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_COMPILE_BYTECODE": "1",
    }


def run_together(jobs: list[tuple[str, list[str | Path], dict[str, str]]]) -> None:
    """Run independent commands at once, each logging to its own file; print each log as it ends.

    The suites spend most of their time waiting on the processes they start
    (workers, servers), so on two cores they finish sooner side by side.
    """
    logs = Path(tempfile.mkdtemp(prefix="qs-run-"))
    running = []
    for title, cmd, env in jobs:
        log = logs / (title.replace(" ", "-") + ".log")
        printable = " ".join(str(c) for c in cmd)
        print(f"$ {printable}  (started: {title}; log {log})", flush=True)
        handle = open(log, "wb")  # noqa: SIM115 - closed when the job ends
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        running.append((title, proc, handle, log, time.monotonic()))
    failed = []
    while running:
        for job in list(running):
            title, proc, handle, log, started = job
            # wait4 gives the lane's CPU time too (its own and that of the
            # processes it reaped): on two cores the command is bound by CPU,
            # so that is where its time budget goes.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if not pid:
                continue
            proc.returncode = os.waitstatus_to_exitcode(status)
            running.remove(job)
            handle.close()
            verdict = "passed" if proc.returncode == 0 else "FAILED"
            cpu = usage.ru_utime + usage.ru_stime
            say(f"{title}: {verdict} in {time.monotonic() - started:.0f} s, {cpu:.0f} s of CPU")
            sys.stdout.write(log.read_text(errors="replace"))
            sys.stdout.flush()
            if proc.returncode:
                failed.append(title)
        time.sleep(0.5)
    shutil.rmtree(logs, ignore_errors=True)
    if failed:
        sys.exit(f"FAILED: {', '.join(failed)}")


def cmd_test(args: argparse.Namespace) -> None:
    started = time.monotonic()
    ensure_disk(test_disk_need(with_matrix=not args.no_matrix))
    # Chromium drives the browser test of the demo (Playwright cannot download its own here).
    ensure_system({**SYSTEM_PACKAGES, **BROWSER_PACKAGES})
    ensure_venv("dev")
    tox: list[tuple[str, list[str | Path], dict[str, str]]] = []
    if not args.no_matrix:
        tox.append(("tox matrix", *matrix_command()))
    ruff()  # seconds: a style error stops the command before anything starts
    say("mypy and the docs, the suite on SQLite and on PostgreSQL, the end-to-end runs and the tox matrix")
    # The end-to-end runs (marked e2e) run once, in a lane of their own, on
    # SQLite: the benchmark smoke run (its own services and databases) and the
    # browser test of the demo (which keeps its own SQLite database).  They
    # are the longest tests; beside each other they end before the suites.
    e2e = ["tests/test_benchmarks.py", "tests/test_browser.py"]
    # Each lane names its slowest tests: where the command's time budget goes.
    slowest = "--durations=12"
    run_together(
        [
            # mypy is the slow one of the static checks: beside the suites, not before them.
            ("mypy, import layers and docs", [PY, Path(__file__).resolve(), "check", "--after-ruff"], {}),
            (
                "Test suite on SQLite",
                [PY, "-m", "pytest", slowest, *(f"--ignore={path}" for path in e2e)],
                {},
            ),
            (
                "End-to-end runs: the benchmark smoke run and the browser",
                [PY, "-m", "pytest", slowest, *e2e],
                {},
            ),
            # The model of the life of files (tests/test_lifecycle.py) drives the
            # same SQL on either database; it searches deepest on SQLite, where its
            # examples cost least.  A test that touches no database runs the same
            # on either, so only the SQLite lane runs it (tests/plugin.py).
            (
                "Test suite on PostgreSQL",
                [PY, "-m", "pytest", slowest, "-m", "not e2e"],
                {"QS_DB": "postgres", "QS_HYPOTHESIS_EXAMPLES": "50", "QS_DATABASE_TESTS_ONLY": "1"},
            ),
            *tox,
        ]
    )
    say(f"All tests passed in {time.monotonic() - started:.0f} s")


def cmd_check(args: argparse.Namespace) -> None:
    """The static checks of the test command: ruff, mypy, import-linter and the docs build."""
    ensure_venv("dev")
    if not args.after_ruff:  # the test command has run it already
        ruff()
    types_and_layers()
    docs()


def cmd_unit(args: argparse.Namespace) -> None:
    """The tests that need no service: no Redis, S3, worker, PostgreSQL or browser."""
    ensure_venv("dev")
    # The property tests with fewer examples than the full command runs.
    # In two processes (pytest-xdist), each with its own test database.
    pytest(
        "-q", "-n", "2", "-m", "not services", *args.rest,
        env={"QS_UNIT": "1", "QS_HYPOTHESIS_EXAMPLES": "25"},
    )  # fmt: skip


def cmd_demo(args: argparse.Namespace) -> None:
    ensure_venv("demo")
    os.execv(PY, [str(PY), str(ROOT / "example_project" / "run_demo.py"), *args.rest])


def cmd_bench(args: argparse.Namespace) -> None:
    # The full run writes 500 MB files three times over (local, moto's spool, raw boto3's source).
    ensure_disk(3.0 + (0.0 if PY.exists() else 0.8))
    ensure_system(SYSTEM_PACKAGES)
    ensure_venv("bench")
    os.execv(PY, [str(PY), "-m", "benchmarks", *args.rest])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    test = sub.add_parser("test", help="lint, type-check and run every test on real services")
    test.add_argument("--no-matrix", action="store_true", help="skip the tox matrix")
    test.set_defaults(func=cmd_test)
    check = sub.add_parser("check", help="ruff, mypy, import-linter and the docs build")
    check.add_argument("--after-ruff", action="store_true", help=argparse.SUPPRESS)
    check.set_defaults(func=cmd_check)
    for name, func, text in (
        ("unit", cmd_unit, "run the tests that need no service, in seconds"),
        ("demo", cmd_demo, "run the example project"),
        ("bench", cmd_bench, "run benchmarks"),
    ):
        p = sub.add_parser(name, help=text, description=f"{text}; other options go to it as they are")
        p.set_defaults(func=func)
    # Known args only: ``bench --only 1,3`` passes its options on (REMAINDER would not take them).
    args, args.rest = parser.parse_known_args()
    if args.rest and args.command in ("test", "check"):
        parser.error(f"unrecognized arguments: {' '.join(args.rest)}")
    args.func(args)


if __name__ == "__main__":
    main()
