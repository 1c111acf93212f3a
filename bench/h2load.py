"""gRPC unary calls with h2load (nghttp2-client): one fixed request, sent as fast as the server answers.

A gRPC request body is the 5-byte length prefix (compressed flag, big-endian
length) followed by the serialized message; h2load sends it with the headers
gRPC needs. Per-request latencies come from h2load's --log-file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def grpc_frame(message: bytes) -> bytes:
    """The length-prefixed gRPC message."""
    return b"\0" + len(message).to_bytes(4, "big") + message


@dataclass
class H2loadResult:
    """What one h2load run measured."""

    requests: int
    succeeded: int
    failed: int
    elapsed: float
    latencies_us: list[int]

    @property
    def rate(self) -> float:
        """Completed requests per second."""
        return self.succeeded / self.elapsed if self.elapsed else 0.0


def run_h2load(
    target: str, path: str, body: bytes, workdir: Path, *, duration: float, clients: int, streams: int, name: str
) -> H2loadResult:
    """Run h2load for ``duration`` seconds against http://target/path with ``body``."""
    binary = shutil.which("h2load")
    if binary is None:
        raise SystemExit("h2load is missing: apt-get install nghttp2-client (make bench installs it)")
    data = workdir / f"{name}.body"
    data.write_bytes(grpc_frame(body))
    log = workdir / f"{name}.h2load.log"
    argv = [
        binary,
        "-D", f"{duration:g}",
        "-c", str(clients),
        "-m", str(streams),
        "-t", "1",
        "-d", str(data),
        "-H", "content-type: application/grpc",
        "-H", "te: trailers",
        "--log-file", str(log),
        f"http://{target}{path}",
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    text = proc.stdout
    if proc.returncode != 0:
        raise RuntimeError(f"h2load failed ({proc.returncode}): {proc.stderr[-2000:]}{text[-2000:]}")
    elapsed = float(re.search(r"finished in ([\d.]+)s", text).group(1))
    match = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", text)
    latencies = []
    for line in log.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1] == "200":
            latencies.append(int(parts[2]))
    return H2loadResult(int(match.group(1)), int(match.group(2)), int(match.group(3)), elapsed, latencies)
