"""Keep-alive HTTPS round trips from CPython (http.client over ssl: the
SSL_write_ex / SSL_read_ex path). Commands on stdin, one JSON line each:
    run N   a new connection, 5 warm-up requests, then N timed GET / -> {"ns": ..., "n": N}

    python bench/workers/https_client.py PORT
"""
import http.client
import json
import os
import ssl
import sys
import time

port = int(sys.argv[1])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
print(json.dumps({"pid": os.getpid()}), flush=True)
for line in sys.stdin:
    parts = line.split()
    if parts[:1] != ["run"]:
        break
    n = int(parts[1])
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    for _ in range(5):
        conn.request("GET", "/")
        conn.getresponse().read()
    t = time.perf_counter_ns()
    for _ in range(n):
        conn.request("GET", "/")
        conn.getresponse().read()
    ns = time.perf_counter_ns() - t
    conn.close()
    print(json.dumps({"ns": ns, "n": n}), flush=True)
