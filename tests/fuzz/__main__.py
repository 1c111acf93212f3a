"""Run the fuzz targets under atheris (libFuzzer) with coverage of the ``sipauth`` package.

::

    python -m tests.fuzz run [--runs 1000000] [--weights parser=3,verify=1] [--workdir .fuzz] [--tolerate ISSUE,...]
    python -m tests.fuzz fuzz TARGET [libFuzzer options] [corpus directory or input file ...]

``run`` (what ``make fuzz`` calls) gives each target its share of ``--runs``
inputs, runs the targets side by side in child processes, and prints the
number of inputs each executed and whether any crashed. Its working
directory holds the corpus (seeded from ``fuzz_targets.seeds`` and grown by
libFuzzer), one log per target and, under ``crashes/TARGET/``, every input
that crashed, timed out or ran out of memory. ``fuzz TARGET FILE`` replays
one such input and prints its traceback. ``--tolerate`` names known, reported
issues (``fuzz_targets.KNOWN_ISSUES``) that are counted and printed instead of
stopping the run; without it every failure is a crash.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_TARGETS = ("parser", "verify")
_ARTIFACTS = ("crash-", "timeout-", "oom-", "leak-")
_EXECUTED = re.compile(r"stat::number_of_executed_units: (\d+)|Done (\d+) runs")
_PROGRESS = re.compile(r"^#(\d+)\s", re.MULTILINE)
_PROGRESS_EVERY = 60.0
_TOLERATED = re.compile(r"^fuzz: tolerated known issue (\S+): (\d+) hits", re.MULTILINE)
#: Comma-separated known issues (fuzz_targets.KNOWN_ISSUES) the verify target counts instead of failing on.
TOLERATE_ENV = "SIPAUTH_FUZZ_TOLERATE"


def _fuzz(target: str, libfuzzer_args: list[str]) -> None:
    """Run one target in this process under libFuzzer; never returns."""
    import atheris

    # Coverage guidance comes from the package under test, not from the harness or the client.
    with atheris.instrument_imports(include=["sipauth"]):
        from tests.fuzz.fuzz_targets import TARGETS, VerifyTarget
    tolerated = [name for name in os.environ.get(TOLERATE_ENV, "").split(",") if name]
    run = VerifyTarget(tolerated) if target == VerifyTarget.name else TARGETS[target]()
    atheris.Setup([sys.argv[0], *libfuzzer_args], run)
    atheris.Fuzz()


def _dict_line(index: int, word: str) -> str:
    escaped = "".join(ch if " " <= ch < "\x7f" and ch not in '"\\' else f"\\x{ord(ch):02x}" for ch in word)
    return f'w{index}="{escaped}"\n'


def _prepare(workdir: Path, target: str) -> tuple[Path, Path, Path]:
    """Corpus directory (seeds written afresh), artifact directory, dictionary file."""
    from tests.fuzz.fuzz_targets import dictionary, seeds

    corpus = workdir / "corpus" / target
    crashes = workdir / "crashes" / target
    for directory in (corpus, crashes, workdir / "logs"):
        directory.mkdir(parents=True, exist_ok=True)
    for index, seed in enumerate(seeds(target)):
        (corpus / f"seed-{index:04d}").write_bytes(seed)
    words = workdir / f"{target}.dict"
    words.write_text("".join(_dict_line(i, w) for i, w in enumerate(dictionary())), encoding="ascii")
    return corpus, crashes, words


def _artifacts(crashes: Path, since: float) -> list[Path]:
    return sorted(
        path for path in crashes.iterdir() if path.name.startswith(_ARTIFACTS) and path.stat().st_mtime >= since
    )


def _executed(log: str) -> int | None:
    counts = [int(a or b) for a, b in _EXECUTED.findall(log)]
    if counts:
        return max(counts)
    progress = _PROGRESS.findall(log)
    return int(progress[-1]) if progress else None


def _run(runs: int, weights: dict[str, int], workdir: Path, max_len: int, tolerate: list[str]) -> int:
    """Fuzz every target with a weight; print inputs executed and crashes per target; 0 if none crashed."""
    from tests.fuzz.fuzz_targets import KNOWN_ISSUES

    for issue in tolerate:
        if issue not in KNOWN_ISSUES:
            print(f"fuzz: unknown issue {issue!r}; known: {', '.join(KNOWN_ISSUES)}", file=sys.stderr)
            return 2
        print(f"fuzz: TOLERATING known issue {issue} ({KNOWN_ISSUES[issue]}): counted, not failed on", flush=True)
    environment = {**os.environ, TOLERATE_ENV: ",".join(tolerate)}
    total_weight = sum(weights.values())
    started = time.time()
    children: dict[str, tuple[subprocess.Popen[bytes], Path, Path, float]] = {}
    for target, weight in weights.items():
        share = -(-runs * weight // total_weight)  # round up: the total is at least ``runs``
        corpus, crashes, words = _prepare(workdir, target)
        log = workdir / "logs" / f"{target}.log"
        command = [
            sys.executable,
            "-m",
            "tests.fuzz",
            "fuzz",
            target,
            f"-runs={share}",
            f"-artifact_prefix={crashes}/",
            f"-dict={words}",
            f"-max_len={max_len}",
            "-timeout=10",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
            str(corpus),
        ]
        print(f"fuzz: {target}: {share} inputs, log {log}", flush=True)
        with log.open("wb") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT)
        children[target] = (process, log, crashes, time.time())

    last_report = time.time()
    while any(process.poll() is None for process, *_ in children.values()):
        time.sleep(1)
        if time.time() - last_report >= _PROGRESS_EVERY:
            last_report = time.time()
            states = []
            for target, (process, log, _, _) in children.items():
                done = _executed(log.read_text("utf-8", "replace")) or 0
                states.append(f"{target} {done}{'' if process.poll() is None else ' (done)'}")
            print(f"fuzz: {time.time() - started:.0f} s: " + ", ".join(states), flush=True)

    failed = False
    total = 0
    print("fuzz: results", flush=True)
    for target, (process, log, crashes, since) in children.items():
        text = log.read_text("utf-8", "replace")
        executed = _executed(text) or 0
        total += executed
        found = _artifacts(crashes, since)
        elapsed = log.stat().st_mtime - since
        verdict = "no crash" if process.returncode == 0 and not found else f"CRASH (exit {process.returncode})"
        failed |= verdict != "no crash"
        print(f"  {target:<8} {executed:>9} inputs in {elapsed:6.0f} s  {verdict}", flush=True)
        hits: dict[str, int] = {}
        for issue, count in _TOLERATED.findall(text):
            hits[issue] = max(hits.get(issue, 0), int(count))
        for issue, count in hits.items():
            print(f"           tolerated known issue {issue}: at least {count} hits (not a pass for it)", flush=True)
        for path in found:
            prefix = f"{TOLERATE_ENV}={','.join(tolerate)} " if tolerate else ""
            print(f"           {path}  replay: {prefix}python -m tests.fuzz fuzz {target} {path}", flush=True)
        if verdict != "no crash" and not found:
            print(f"           see {log}", flush=True)
    print(
        f"  {'total':<8} {total:>9} inputs in {time.time() - started:6.0f} s  {'CRASH' if failed else 'no crash'}",
        flush=True,
    )
    return 1 if failed else 0


def _weights(text: str) -> dict[str, int]:
    weights = {}
    for item in text.split(","):
        name, _, weight = item.partition("=")
        if name not in _TARGETS or not weight.isdigit() or int(weight) <= 0:
            raise argparse.ArgumentTypeError(f"expected TARGET=WEIGHT with TARGET in {_TARGETS}, got {item!r}")
        weights[name] = int(weight)
    return weights


def main(argv: list[str]) -> int:
    """Command line entry point."""
    if len(argv) >= 1 and argv[0] == "fuzz":
        if len(argv) < 2 or argv[1] not in _TARGETS:
            print(f"usage: python -m tests.fuzz fuzz {{{','.join(_TARGETS)}}} [libFuzzer args]", file=sys.stderr)
            return 2
        _fuzz(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="fuzz every target; print inputs executed and crashes")
    run.add_argument("--runs", type=int, default=1_000_000, help="inputs in total, split by weight")
    run.add_argument("--weights", type=_weights, default={"parser": 3, "verify": 1}, help="e.g. parser=3,verify=1")
    run.add_argument("--workdir", type=Path, default=ROOT / ".fuzz", help="corpus, logs and crashes")
    run.add_argument("--max-len", type=int, default=12_000, help="largest input libFuzzer generates")
    run.add_argument(
        "--tolerate", default="", help="comma-separated known issues to count instead of failing on (see KNOWN_ISSUES)"
    )
    commands.add_parser("fuzz", help="TARGET [libFuzzer args]: one target in this process (a file replays it)")
    args = parser.parse_args(argv)
    tolerate = [issue for issue in args.tolerate.split(",") if issue]
    return _run(args.runs, args.weights, args.workdir.resolve(), args.max_len, tolerate)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
