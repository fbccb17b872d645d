"""Real servers on loopback for integration tests: a free port, and an S3-compatible server (moto)."""

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_client(env: dict):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])


@contextmanager
def moto_server(*buckets: str) -> Iterator[dict]:
    """`moto_server` on a free loopback port with `buckets` created; yields the AWS_* environment
    that reaches it (credentials only there, as users give them). Stopped on exit."""
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    try:
        end = time.time() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.time() < end, "moto_server did not start within 30 s"
            time.sleep(0.05)
        client = s3_client(env)
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)
