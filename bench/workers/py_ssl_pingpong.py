"""TLS calls through CPython's ssl module, in one process: a client and a
server SSLObject joined by MemoryBIOs, so no syscall is in the loop. Each
round is one write (SSL_write_ex) and one read (SSL_read_ex) of SIZE bytes:
two probed calls. Commands on stdin, one JSON line each on stdout:
    calls N SIZE   N rounds as fast as possible -> {"ns": ..., "calls": 2N}

    python bench/workers/py_ssl_pingpong.py CERT KEY
"""
import json
import os
import ssl
import sys
import time


def pair(cert: str, key: str):
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    sctx.num_tickets = 0  # nothing left unread towards the client
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cli = cctx.wrap_bio(c_in, c_out)
    srv = sctx.wrap_bio(s_in, s_out, server_side=True)
    done = set()
    for _ in range(100):
        for name, obj in (("c", cli), ("s", srv)):
            if name in done:
                continue
            try:
                obj.do_handshake()
                done.add(name)
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if len(done) == 2:
            return cli, srv, c_out, s_in
    raise RuntimeError("handshake did not finish")


def main() -> None:
    cli, srv, c_out, s_in = pair(sys.argv[1], sys.argv[2])
    print(json.dumps({"pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        parts = line.split()
        if parts[:1] == ["calls"]:
            n, size = int(parts[1]), int(parts[2])
            payload = b"x" * size
            write, read, move, take = cli.write, srv.read, s_in.write, c_out.read
            t = time.perf_counter_ns()
            for _ in range(n):
                write(payload)
                move(take())
                read(size)
            ns = time.perf_counter_ns() - t
            print(json.dumps({"ns": ns, "calls": 2 * n}), flush=True)
        elif parts[:1] == ["quit"]:
            break


if __name__ == "__main__":
    main()
