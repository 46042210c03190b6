"""The HTTPS server of the microbenchmark: tests/support.py's HttpsServer
(ThreadingHTTPServer, HTTP/1.1 keep-alive, Nagle off) on 127.0.0.1.
Prints {"pid", "port", "cert"} and serves until stdin closes.

    python bench/workers/https_server.py DIR
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support import HttpsServer  # noqa: E402

server = HttpsServer(Path(sys.argv[1]))
print(json.dumps({"pid": os.getpid(), "port": server.port, "cert": str(server.cert)}), flush=True)
sys.stdin.read()
server.close()
