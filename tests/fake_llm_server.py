"""A vLLM-like OpenAI completions server on 127.0.0.1, for tests of the openai backend."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    """A vLLM-like /v1/completions on 127.0.0.1 whose answers depend on the prompt ids."""

    def __init__(self, *, delay: float = 0.0, die_after: int | None = None,
                 models: list | None = None, down_after: int | None = None,
                 refuse_longer_than: int | None = None) -> None:
        """``die_after`` requests, it closes each connection unanswered; ``down_after``
        requests, it answers 503 (overloaded) until ``down_after`` is set to None; a
        request holding a prompt of more than ``refuse_longer_than`` ids is refused (400),
        as vLLM refuses one longer than its model takes."""
        self.requests, self.delay, self.die_after = 0, delay, die_after
        self.down_after = down_after
        self.refuse_longer_than = refuse_longer_than
        self.gets = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                outer.gets += 1
                if models is None or self.path != "/v1/models":
                    self.send_error(404)
                    return
                data = json.dumps({"object": "list", "data": models}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                outer.requests += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.die_after is not None and outer.requests > outer.die_after:
                    self.connection.close()  # dies mid-batch: no reply at all
                    return
                if outer.down_after is not None and outer.requests > outer.down_after:
                    self.send_error(503, "overloaded")
                    return
                limit = outer.refuse_longer_than
                if limit is not None and any(len(p) > limit for p in body["prompt"]):
                    self.send_error(400, f"a prompt is longer than {limit} tokens")
                    return
                time.sleep(outer.delay)
                yes, no = body["logprob_token_ids"]
                choices = [{"index": i, "logprobs": {"top_logprobs": [{
                    f"token_id:{yes}": fake_logprob(p), f"token_id:{no}": -1.0}]}}
                    for i, p in enumerate(body["prompt"])]
                data = json.dumps({"choices": choices}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a dying replica is the test
                pass

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def fake_logprob(ids: list[int]) -> float:
    return -((sum(ids) % 7) / 3.0)
