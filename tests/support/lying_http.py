#!/usr/bin/python3
"""An HTTP server that breaks the protocol on purpose, for the data-staging tests.

nginx will not send a body shorter than its Content-Length, nor change a file's length between
HEAD and GET; real servers behind broken proxies do. Listens on 127.0.0.1 (a free port, printed
on the first line of stdout) and serves one fixed body of SIZE bytes:

  /short    announces SIZE bytes, sends half of them, closes the connection
  /grows    HEAD announces SIZE bytes; GET sends 2 * SIZE (chunked: no length to check)
  /norange  ignores Range: always 200 with the whole body
  /stall    announces SIZE bytes, sends half, then nothing (until the client gives up)
  /partial  HEAD gives no length; GET, with or without Range, answers 206 with the first half
"""
import http.server
import socketserver
import sys
import time

SIZE = 1_000_000
BODY = bytes((i * 7 + 3) % 251 for i in range(SIZE))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def head(self, length, status=200):
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", '"v1"')
        self.end_headers()

    def do_HEAD(self):
        if self.path == "/partial":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            return
        self.head(SIZE)

    def do_GET(self):
        if self.path == "/short":
            self.head(SIZE)
            self.wfile.write(BODY[: SIZE // 2])
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/grows":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (BODY, BODY):
                self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/norange":
            self.head(SIZE)
            self.wfile.write(BODY)
        elif self.path == "/partial":
            self.send_response(206)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Range", "bytes 0-%d/%d" % (SIZE // 2 - 1, SIZE))
            self.send_header("Content-Length", str(SIZE // 2))
            self.end_headers()
            self.wfile.write(BODY[: SIZE // 2])
        elif self.path == "/stall":
            self.head(SIZE)
            self.wfile.write(BODY[: SIZE // 2])
            self.wfile.flush()
            time.sleep(120)
            self.close_connection = True
        else:
            self.send_error(404)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients hang up on purpose here (a refused body); no tracebacks on stderr


def main():
    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
