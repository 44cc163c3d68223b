"""A tiny HTTP server for the namespace cluster's tests and benchmarks: ``python -I -S
tiny_http.py MARKER ADDRESS [PORT]`` answers every request on ADDRESS:PORT (default 80) with
``200 ok``. MARKER is there only so that its command line can be found (tests.support.nssample).

Standard library sockets only, and meant to run with ``-I -S``: it listens within tens of
milliseconds of its start, where ``http.server`` needs a few hundred on a busy machine, so a
failover's figure is the cluster's, not the Python start-up's.
"""

import socket
import sys

ANSWER = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"


def main() -> None:
    address = sys.argv[2]
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 80
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen(128)
    while True:
        conn, _ = server.accept()
        try:
            conn.settimeout(2.0)
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                request += chunk
            if request:
                conn.sendall(ANSWER)
        except OSError:
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    main()
