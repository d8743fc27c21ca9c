"""Local servers for tests, on 127.0.0.1 only: an HTTP file server with Range requests and an S3-compatible
server (moto's server mode).

Each server runs in a child process: GDAL keeps the GIL while it reads, so a server thread inside the test
process could not answer GDAL's own requests. A child exits when its parent goes away (its stdin closes).

    with HttpFileServer(root) as http:           # http.url + "/file.tif"; http.requests() lists what was asked
        ...
    with S3Server() as s3:                       # s3.env: AWS_* for GDAL, boto3, s3fs/fsspec and obstore
        s3.create_bucket("b"); s3.upload(path, "b", "key.tif")
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

REGION = "us-east-1"


# -- HTTP ---------------------------------------------------------------------------------------------------
class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single byte-range requests (``Range: bytes=a-b``, ``a-``, ``-n``): what GDAL's /vsicurl/
    asks for. The standard library's handler ignores Range, and werkzeug's development server does not keep
    connections alive, which stalls libcurl; so the range handling is written here (a few lines)."""

    protocol_version = "HTTP/1.1"
    log_path: str | None = None

    def log_message(self, *args) -> None:  # quiet
        pass

    def _log(self, status: int) -> None:
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(json.dumps([self.command, self.path, self.headers.get("Range"), status]) + "\n")

    def send_head(self):
        path = self.translate_path(self.path.split("?", 1)[0])
        if not os.path.isfile(path):
            self._log(404)
            self.send_error(404, "not found")
            return None
        size = os.path.getsize(path)
        f = open(path, "rb")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range") or "")
        if m and m.group(1) + m.group(2):
            a, b = m.groups()
            start, end = (size - int(b), size - 1) if a == "" else (int(a), min(int(b) if b else size - 1, size - 1))
            start = max(start, 0)
            if start >= size:
                f.close()
                self._log(416)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            f.seek(start)
            self._remaining = end - start + 1
            self._log(206)
        else:
            self.send_response(200)
            self._remaining = size
            self._log(200)
        st = os.stat(path)  # what nginx and Apache send: a weak validator from size and mtime, and the mtime
        self.send_header("ETag", f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
        self.send_header("Last-Modified", self.date_time_string(int(st.st_mtime)))
        self.send_header("Content-Length", str(self._remaining))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", self.guess_type(path))
        self.end_headers()
        return f

    def copyfile(self, source, outputfile) -> None:
        n = self._remaining
        while n > 0:
            buf = source.read(min(n, 1 << 16))
            if not buf:
                break
            outputfile.write(buf)
            n -= len(buf)


def _serve_http(root: str, log_path: str) -> None:
    handler = functools.partial(type("H", (_RangeHandler,), {"log_path": log_path}), directory=root)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    print(json.dumps({"port": srv.server_port}), flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)


# -- S3 (moto) ----------------------------------------------------------------------------------------------
def _serve_s3() -> None:
    """moto in server mode with request signing enforced: an IAM user with full S3 access is created first, and
    its keys are the only ones accepted afterwards (so refused credentials can be tested)."""
    import logging

    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="bootstrap",
                       aws_secret_access_key="bootstrap")
    iam.create_user(UserName="geodino-tests")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="geodino-tests", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="geodino-tests")["AccessKey"]
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=30).raise_for_status()
    print(json.dumps({"port": port, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}), flush=True)
    sys.stdin.read()
    srv.stop()


# -- the parent's side --------------------------------------------------------------------------------------
class _Child:
    args: list[str] = []

    def start(self):
        self._proc = subprocess.Popen([sys.executable, __file__, *self.args], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait(timeout=30)
            raise RuntimeError(f"test server {self.args[0]} did not start (exit code {self._proc.returncode})")
        self.info = json.loads(line)
        self.port = int(self.info["port"])
        return self

    def stop(self) -> None:
        if getattr(self, "_proc", None) is not None and self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class HttpFileServer(_Child):
    """Serves the files under ``root`` at :attr:`url`, with byte ranges; :meth:`requests` is the access log."""

    def __init__(self, root: str | os.PathLike, log_path: str | os.PathLike | None = None):
        self.root = str(root)
        self.log_path = str(log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"geodino-http-{os.getpid()}-"
                                                                                  f"{id(self)}.log")
        Path(self.log_path).write_text("")
        self.args = ["http", self.root, self.log_path]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[tuple[str, str, str | None, int]]:
        """(method, path, Range header, status) of every request so far."""
        return [tuple(json.loads(line)) for line in Path(self.log_path).read_text().splitlines() if line]


class S3Server(_Child):
    """A local S3 endpoint that checks signatures; :attr:`env` holds the credentials and endpoint settings for
    GDAL (/vsis3/), boto3, s3fs/fsspec and obstore."""

    args = ["s3"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.info["key"], "AWS_SECRET_ACCESS_KEY": self.info["secret"],
            "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,  # botocore/boto3 and s3fs
            "AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true",  # obstore (object_store)
            "AWS_S3_ENDPOINT": f"127.0.0.1:{self.port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",  # GDAL
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,  # ignore ~/.aws
        }

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs ``storage_options`` for this server."""
        return {"key": self.info["key"], "secret": self.info["secret"],
                "client_kwargs": {"endpoint_url": self.endpoint, "region_name": REGION}}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.info["key"], aws_secret_access_key=self.info["secret"])

    def create_bucket(self, name: str) -> str:
        c = self.client()
        if name not in {b["Name"] for b in c.list_buckets().get("Buckets", [])}:
            c.create_bucket(Bucket=name)
        return name

    def upload(self, path: str | os.PathLike, bucket: str, key: str) -> str:
        """Upload a local file; returns its ``s3://`` URL."""
        self.client().upload_file(str(path), bucket, key)
        return f"s3://{bucket}/{key}"


if __name__ == "__main__":
    if sys.argv[1] == "http":
        _serve_http(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "s3":
        _serve_s3()
    else:
        sys.exit(f"unknown server {sys.argv[1]!r}")
