"""A local OTLP/HTTP receiver that decodes what it is sent with the
OpenTelemetry protobuf definitions (opentelemetry-proto), for what Phoenix
does not show: resource attributes, request headers, and metrics (Phoenix
has no metrics endpoint). 127.0.0.1 only."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def value(v):
    """A protobuf AnyValue as Python."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def attributes(kvs) -> dict:
    return {kv.key: value(kv.value) for kv in kvs}


class OtlpReceiver:
    def __init__(self):
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path == "/v1/traces":
                    message = ExportTraceServiceRequest()
                    message.ParseFromString(body)
                    receiver.traces.append(message)
                elif self.path == "/v1/metrics":
                    message = ExportMetricsServiceRequest()
                    message.ParseFromString(body)
                    receiver.metrics.append(message)
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def spans(self) -> list[tuple[dict, dict]]:
        """(resource attributes, span as a dict) of every span received;
        `request` is the number of the request that brought it."""
        out = []
        for n, request in enumerate(self.traces):
            for rs in request.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append((resource, {
                            "name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                            "parent_id": s.parent_span_id.hex() or None, "kind": s.kind,
                            "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                            "attributes": attributes(s.attributes), "status": s.status.code,
                            "events": [(e.name, e.time_unix_nano, attributes(e.attributes)) for e in s.events],
                            "scope": ss.scope.name, "request": n}))
        return out

    def metric_points(self) -> list[dict]:
        """The last data point received of each metric series."""
        last: dict = {}
        for request in self.metrics:
            for rm in request.resource_metrics:
                resource = attributes(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        for p in getattr(m, kind).data_points:
                            attrs = attributes(p.attributes)
                            point = {"name": m.name, "unit": m.unit, "kind": kind, "resource": resource,
                                     "attributes": attrs, "start": p.start_time_unix_nano, "time": p.time_unix_nano}
                            if kind == "histogram":
                                point.update(count=p.count, sum=p.sum, bounds=list(p.explicit_bounds),
                                             buckets=list(p.bucket_counts),
                                             temporality=m.histogram.aggregation_temporality)
                            else:
                                point.update(value=p.as_int, monotonic=m.sum.is_monotonic)
                            last[(m.name, tuple(sorted(attrs.items())))] = point
        return list(last.values())

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
