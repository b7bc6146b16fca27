#!/usr/bin/env python3
"""A real OTLP/HTTP trace receiver that counts what arrives, for measuring tracing overhead.

Answers 200 to POST /v1/traces (protobuf, optionally gzip), decodes each body with the
`opentelemetry-proto` package (pip install opentelemetry-proto) and keeps counts per service and
span name: requests, body bytes, spans. GET /stats returns them as JSON; POST /reset zeroes them.

    python3 benches/scripts/otlp_count.py --port 4318 &
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 strand-broker ...
    curl -s 127.0.0.1:4318/stats
"""

import argparse
import gzip
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

LOCK = threading.Lock()
STATS = {"requests": 0, "bytes": 0, "spans": 0, "undecodable": 0}
NAMES = Counter()


def service_of(resource_spans):
    for attribute in resource_spans.resource.attributes:
        if attribute.key == "service.name":
            return attribute.value.string_value
    return "?"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, body, content_type):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/reset":
            with LOCK:
                for key in STATS:
                    STATS[key] = 0
                NAMES.clear()
            return self.reply(200, b"{}", "application/json")
        if self.path != "/v1/traces":
            return self.reply(404, b'{"error": "only /v1/traces"}', "application/json")
        raw = gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(raw)
        except Exception:  # a body that is not an export request: counted, refused
            with LOCK:
                STATS["undecodable"] += 1
            return self.reply(400, b'{"error": "not an ExportTraceServiceRequest"}', "application/json")
        with LOCK:
            STATS["requests"] += 1
            STATS["bytes"] += len(body)
            for resource_spans in request.resource_spans:
                service = service_of(resource_spans)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        STATS["spans"] += 1
                        NAMES[f"{service} {span.name}"] += 1
        self.reply(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    def do_GET(self):
        if self.path != "/stats":
            return self.reply(404, b'{"error": "only /stats"}', "application/json")
        with LOCK:
            stats = dict(STATS, names=dict(NAMES.most_common()))
        self.reply(200, json.dumps(stats).encode(), "application/json")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"OTLP receiver on http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
