"""Raw boto3, the baseline of the transfer scenarios, in its own process (as a worker is).

``python -m benchmarks.rawboto one FILE KEY`` uploads one file with
``upload_file`` and boto3's default ``TransferConfig`` (what django-storages
uses); ``one FILE KEY read`` does the same while another thread reads the
file once for the CRC32 of its parts, as the worker's verification does;
``python -m benchmarks.rawboto many DIR PREFIX THREADS`` PUTs every
file of DIR with THREADS threads sharing one client.  Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def _client() -> Any:
    return boto3.client(
        "s3",
        endpoint_url=os.environ["QS_S3_ENDPOINT"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


def _verification_read(path: str) -> threading.Thread:
    """The worker's own read of a file while its parts go out (the CRC32 S3 keeps), not started."""
    from s3transfer.utils import ChunksizeAdjuster

    from queued_storage.s3 import _composite_crc32

    part_size = ChunksizeAdjuster().adjust_chunksize(
        TransferConfig().multipart_chunksize, os.path.getsize(path)
    )
    return threading.Thread(target=_composite_crc32, args=(path, part_size))


def one(path: str, key: str, bucket: str, read: bool = False) -> dict[str, float]:
    client = _client()
    client.put_object(Bucket=bucket, Key=key + ".warmup", Body=b"x" * 1024)
    client.upload_file(path, bucket, key + ".warmup2", Config=TransferConfig())  # load s3transfer
    idle = _kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak restarts from here
    reader = _verification_read(path) if read else None  # imported before the clock starts
    started = time.perf_counter()
    if reader is not None:
        reader.start()
    client.upload_file(path, bucket, key, Config=TransferConfig())
    if reader is not None:
        reader.join()
    seconds = time.perf_counter() - started
    peak = _kib("VmHWM")
    return {"seconds": seconds, "idle_kib": idle, "peak_kib": peak}


def many(directory: str, prefix: str, threads: int, bucket: str) -> dict[str, float]:
    client = _client()
    client.put_object(Bucket=bucket, Key=prefix + "warmup", Body=b"x")
    files = sorted(Path(directory).iterdir())

    def put(path: Path) -> None:
        with path.open("rb") as body:
            client.put_object(Bucket=bucket, Key=prefix + path.name, Body=body)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, files))
    return {"seconds": time.perf_counter() - started, "files": len(files)}


def main() -> None:
    mode, *args = sys.argv[1:]
    bucket = os.environ.get("QS_BENCH_BUCKET", "qs-bench")
    if mode == "one":
        result = one(args[0], args[1], bucket, read=args[2:] == ["read"])
    else:
        result = many(args[0], args[1], int(args[2]), bucket)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
