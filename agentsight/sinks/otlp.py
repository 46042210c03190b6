"""OpenTelemetry export: agentsight's runs as GenAI traces and metrics in
any OTLP backend (a Collector, Tempo, Jaeger, Langfuse, Phoenix, ...).

    OtlpSink      the sink: events -> spans (otlp_spans.TraceBuilder, on the
                  capture thread, a few dictionary operations per event) ->
                  a bounded queue -> ExportWorker
    ExportWorker  a thread that batches the queue and hands it to the
                  OpenTelemetry SDK's OTLP exporter (HTTP/protobuf, or gRPC)
    export_session  a recorded session through the same sink (`export --otlp`)

The capture never waits for the backend: a full queue drops spans, a
backend that is down or slow loses the batches it did not take, and both
are counted and said when the run ends.

The SDK is an optional extra (`pip install agentsight[otlp]`), imported
only here and only when --otlp is used. It reads the standard environment
variables itself: OTEL_EXPORTER_OTLP_ENDPOINT (and _TRACES_/_METRICS_
ENDPOINT), OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _COMPRESSION, _CERTIFICATE;
OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES set the resource;
OTEL_EXPORTER_OTLP_PROTOCOL chooses `http/protobuf` (the default) or `grpc`;
OTEL_METRICS_EXPORTER=none leaves the metrics out; OTEL_BSP_MAX_QUEUE_SIZE,
OTEL_BSP_MAX_EXPORT_BATCH_SIZE and OTEL_BSP_SCHEDULE_DELAY size the queue.
"""
from __future__ import annotations

import collections
import logging
import os
import platform
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .. import __version__
from ..errors import AgentsightError
from .base import Outcome, Sink
from .otlp_spans import MetricPoint, ProcessInfo, SpanData, TraceBuilder, container_of, describe_running

INSTALL_HINT = "pip install 'agentsight[otlp]'"
DEFAULT_HTTP_ENDPOINT = "http://localhost:4318"
DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
FLUSH_SECONDS = 10.0  # at the end of a run, how long the backend gets to take what is left
METRIC_INTERVAL_SECONDS = 60.0


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


@dataclass
class OtlpOptions:
    """`endpoint`: --otlp URL; None or "": from the environment (or the
    OpenTelemetry default). `content`: --otlp-content."""

    endpoint: str | None = None
    content: bool = False

    @property
    def protocol(self) -> str:
        value = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                 or "http/protobuf").strip().lower()
        if value not in ("http/protobuf", "grpc"):
            raise AgentsightError(f"OTEL_EXPORTER_OTLP_PROTOCOL={value}: agentsight exports http/protobuf or grpc",
                                  exit_code=2)
        return value

    def check(self) -> None:
        if self.endpoint:
            parts = urlsplit(self.endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise AgentsightError(f"{self.endpoint}: not an OTLP endpoint URL "
                                      "(for example http://collector:4318)", exit_code=2, parameter="endpoint")
        self._modules()  # the SDK is there, before anything else starts

    def shown(self) -> str:
        """Where the spans go, as the summary names it (no credentials)."""
        if self.protocol == "grpc":
            url = self.endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
                "OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_GRPC_ENDPOINT
        elif self.endpoint:
            url = self._url("traces") or ""
        else:
            url = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
                (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_HTTP_ENDPOINT).rstrip("/") + "/v1/traces")
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"

    def _url(self, signal: str) -> str | None:
        """The HTTP URL of a signal: --otlp is a base URL, as
        OTEL_EXPORTER_OTLP_ENDPOINT is."""
        if not self.endpoint:
            return None
        base = self.endpoint.rstrip("/")
        for known in ("/v1/traces", "/v1/metrics"):
            base = base.removesuffix(known)
        return f"{base}/v1/{signal}"

    def _modules(self) -> tuple[Any, Any]:
        """The SDK's trace and metric exporter modules for the protocol."""
        if self.protocol == "grpc":
            try:
                from opentelemetry.exporter.otlp.proto.grpc import metric_exporter, trace_exporter
            except ImportError:
                raise AgentsightError("OTLP over gRPC needs the OpenTelemetry gRPC exporter, which is not "
                                      "installed: pip install 'agentsight[otlp-grpc]'", exit_code=2) from None
            return trace_exporter, metric_exporter
        try:
            from opentelemetry.exporter.otlp.proto.http import metric_exporter, trace_exporter  # type: ignore[no-redef]
        except ImportError:
            raise AgentsightError("OTLP export needs the OpenTelemetry SDK and its OTLP exporter, which are not "
                                  f"installed: {INSTALL_HINT}", exit_code=2) from None
        return trace_exporter, metric_exporter

    def exporters(self) -> tuple[Any, Any | None]:
        """The SDK's span exporter and metric exporter (None: metrics off)."""
        metrics = os.environ.get("OTEL_METRICS_EXPORTER", "otlp").strip().lower() != "none"
        traces, metric = self._modules()
        if self.protocol == "grpc":
            endpoint = self.endpoint or None
            return (traces.OTLPSpanExporter(endpoint=endpoint),
                    metric.OTLPMetricExporter(endpoint=endpoint) if metrics else None)
        return (traces.OTLPSpanExporter(endpoint=self._url("traces")),
                metric.OTLPMetricExporter(endpoint=self._url("metrics")) if metrics else None)


class _ExportErrors(logging.Handler):
    """Keeps what the SDK's exporters say when a batch fails, for the
    summary, instead of printing each failure while the capture runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None
        self.specific = False  # `last` names a cause, not just that a batch failed
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a log record that does not format
            message = str(record.msg)
        cause = None
        if "Connection refused" in message or "ConnectionRefused" in message:
            cause = "connection refused"
        elif "timed out" in message.lower() or "DEADLINE_EXCEEDED" in message:
            cause = "timed out"
        elif "UNAVAILABLE" in message:
            cause = "unavailable"
        elif isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[1], int):
            cause = f"HTTP {record.args[1]}"  # "Failed to export %s batch code: %s, reason: %s"
        if cause is not None:
            self.last, self.specific = cause, True
        elif self.last is None and message:
            self.last = message.splitlines()[0][:160]


class ExportWorker:
    """The export thread: takes spans from a bounded queue in batches and
    gives them to the SDK exporter. submit() never blocks."""

    def __init__(self, span_exporter: Any, metric_exporter: Any | None, resource: dict[str, str],
                 max_queue: int | None = None, batch: int | None = None, delay: float | None = None):
        self.span_exporter = span_exporter
        self.metric_exporter = metric_exporter
        self.max_queue = max_queue or _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self.batch = min(batch or _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), self.max_queue)
        self.delay = delay if delay is not None else _env_int("OTEL_BSP_SCHEDULE_DELAY", 1000) / 1000
        self.base_resource = resource
        self.sent = self.failed = self.queue_full = self.unsent = 0
        self.metrics_sent = self.metrics_failed = 0
        self._queue: collections.deque[SpanData] = collections.deque()
        self._metrics: list[MetricPoint] | None = None
        self._metrics_time = 0
        self._cond = threading.Condition()
        self._closing = False
        self._resources: dict[tuple[tuple[str, str], ...], Any] = {}
        self._thread = threading.Thread(target=self._run, name="agentsight-otlp", daemon=True)
        self._thread.start()

    # -- the capture thread's side ----------------------------------------------

    def submit(self, spans: Sequence[SpanData]) -> None:
        if not spans:
            return
        with self._cond:
            room = self.max_queue - len(self._queue)
            if room < len(spans):
                self.queue_full += len(spans) - max(room, 0)
                spans = spans[:max(room, 0)]
            self._queue.extend(spans)
            if len(self._queue) >= self.batch:
                self._cond.notify()

    def submit_metrics(self, points: list[MetricPoint], time_ns: int) -> None:
        """The latest cumulative values (replacing any not yet sent)."""
        if self.metric_exporter is None or not points:
            return
        with self._cond:
            self._metrics, self._metrics_time = points, time_ns
            self._cond.notify()

    def close(self, seconds: float = FLUSH_SECONDS) -> None:
        """Sends what is queued, for at most `seconds`; what is left then is counted unsent."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(seconds)
        if self._thread.is_alive():
            # Stop the exporter's retries: the thread ends with its current request.
            for exporter in (self.span_exporter, self.metric_exporter):
                if exporter is not None:
                    try:
                        exporter.shutdown()
                    except Exception:  # noqa: BLE001 - shutting down is best effort
                        pass
            self._thread.join(2.0)
        with self._cond:
            self.unsent += len(self._queue)
            self._queue.clear()
        if not self._thread.is_alive():
            for exporter in (self.span_exporter, self.metric_exporter):
                if exporter is not None:
                    try:
                        exporter.shutdown()
                    except Exception:  # noqa: BLE001
                        pass

    # -- the export thread --------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._closing and len(self._queue) < self.batch and self._metrics is None:
                    self._cond.wait(self.delay)
                batch = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
                metrics, self._metrics = self._metrics, None
                done = self._closing and not self._queue and not batch and metrics is None
            if done:
                return
            if batch:
                self._export_spans(batch)
            if metrics is not None:
                self._export_metrics(metrics, self._metrics_time)

    def _resource(self, extra: tuple[tuple[str, str], ...]) -> Any:
        resource = self._resources.get(extra)
        if resource is None:
            from opentelemetry.sdk.resources import OTELResourceDetector, Resource

            # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over agentsight's defaults.
            resource = Resource({**self.base_resource, **dict(extra)}).merge(OTELResourceDetector().detect())
            self._resources[extra] = resource
        return resource

    def _export_spans(self, batch: list[SpanData]) -> None:
        try:
            result = self.span_exporter.export([self._readable(s) for s in batch])
            ok = getattr(result, "name", str(result)) == "SUCCESS"
        except Exception as exc:  # noqa: BLE001 - a failing exporter must not end the export thread
            logging.getLogger("opentelemetry.agentsight").warning("exporting spans failed: %s", exc)
            ok = False
        if ok:
            self.sent += len(batch)
        else:
            self.failed += len(batch)

    def _readable(self, s: SpanData) -> Any:
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        flags = TraceFlags(TraceFlags.SAMPLED)
        context = SpanContext(s.trace_id, s.span_id, False, flags)
        parent = SpanContext(s.trace_id, s.parent_id, False, flags) if s.parent_id else None
        status = Status(StatusCode.ERROR, s.error) if s.error else Status(StatusCode.UNSET)
        return ReadableSpan(
            name=s.name, context=context, parent=parent, resource=self._resource(s.resource),
            attributes=s.attributes, events=[Event(e.name, e.attributes, e.ts) for e in s.events],
            kind=SpanKind.CLIENT if s.kind == "client" else SpanKind.INTERNAL, status=status,
            start_time=s.start_ns, end_time=s.end_ns,
            instrumentation_scope=InstrumentationScope("agentsight", __version__))

    def _export_metrics(self, points: list[MetricPoint], time_ns: int) -> None:
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality, Histogram, HistogramDataPoint, Metric, MetricsData, NumberDataPoint,
            ResourceMetrics, ScopeMetrics, Sum,
        )
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        by_resource: dict[tuple[tuple[str, str], ...], dict[str, list[MetricPoint]]] = {}
        for p in points:
            by_resource.setdefault(p.resource, {}).setdefault(p.name, []).append(p)
        cumulative = AggregationTemporality.CUMULATIVE
        resource_metrics = []
        for extra, metrics in by_resource.items():
            out = []
            for name, series in metrics.items():
                first = series[0]
                if first.bounds:
                    data: Any = Histogram([HistogramDataPoint(
                        p.attributes, p.start_ns, max(time_ns, p.start_ns), p.count, p.total, list(p.buckets),
                        list(p.bounds), p.min, p.max) for p in series], cumulative)
                else:
                    data = Sum([NumberDataPoint(p.attributes, p.start_ns, max(time_ns, p.start_ns), int(p.total))
                                for p in series], cumulative, True)
                out.append(Metric(name, first.description, first.unit, data))
            resource_metrics.append(ResourceMetrics(self._resource(extra), [ScopeMetrics(
                InstrumentationScope("agentsight", __version__), out, "")], ""))
        assert self.metric_exporter is not None
        try:
            result = self.metric_exporter.export(MetricsData(resource_metrics))
            ok = getattr(result, "name", str(result)) == "SUCCESS"
        except Exception as exc:  # noqa: BLE001
            logging.getLogger("opentelemetry.agentsight").warning("exporting metrics failed: %s", exc)
            ok = False
        if ok:
            self.metrics_sent += len(points)
        else:
            self.metrics_failed += len(points)


class OtlpSink(Sink):
    """Spans and metrics of a run, to an OTLP backend. It says what it sent
    and what it dropped when it closes (after the run's outcome is made, so
    that line is the whole account).

    mode "record": one trace per recorded agent (`roots`, asked for when
    needed: a recording knows them once its command starts); "trace": a
    trace per agent process tree and time window. `live`: the run is a
    capture (processes are looked up in /proc, spans wait SETTLE_SECONDS
    for late links); a session read back gets everything at once."""

    kinds = frozenset(("exec", "exit", "fork", "llm_call", "link", "unexplained"))

    def __init__(self, options: OtlpOptions, *, mode: str = "record", roots: Callable[[], Iterable[int]] | None = None,
                 live: bool = True, host: str | None = None, worker: ExportWorker | None = None,
                 report: Callable[[str], None] | None = None, start_ns: int | None = None):
        options.check()
        self.options = options
        self.live = live
        self.roots: Callable[[], Iterable[int]] = roots or (lambda: ())
        describe: Callable[[int], ProcessInfo] | None = describe_running if live else None
        self.builder = TraceBuilder(mode=mode, roots=lambda: self.roots(), content=options.content,
                                    describe=describe, container=container_of if live else None,
                                    wall_clock=time.time_ns if live else None)
        self._errors = _ExportErrors()
        if worker is None:
            span_exporter, metric_exporter = options.exporters()
            sdk_log = logging.getLogger("opentelemetry")
            sdk_log.addHandler(self._errors)
            sdk_log.propagate = False
            worker = ExportWorker(span_exporter, metric_exporter,
                                  {"service.name": "agentsight", "host.name": host or platform.node()})
        self.worker = worker
        self.report = report or (lambda line: print(line, file=sys.stderr))
        self.spans = 0
        self._now = time.monotonic()
        self._metrics_at = self._now
        self.start_ns = start_ns or time.time_ns()

    def write(self, events: Sequence[Any]) -> None:
        feed, now = self.builder.feed, self._now
        out: list[SpanData] = []
        for e in events:
            made = feed(e, now)
            if made:
                out += made
        self._submit(out)

    def tick(self, now: float) -> None:
        self._now = now
        if not self.live:
            return
        self._submit(self.builder.due(now))
        if now - self._metrics_at >= METRIC_INTERVAL_SECONDS:
            self._metrics_at = now
            self.worker.submit_metrics(self.builder.metrics.points(), time.time_ns())

    def _submit(self, spans: list[SpanData]) -> None:
        if spans:
            self.spans += len(spans)
            self.worker.submit(spans)

    def close(self, outcome: Outcome | None = None) -> None:
        end = time.time_ns() if self.live else self.builder.last_ns
        self._submit(self.builder.close(end))
        self.worker.submit_metrics(self.builder.metrics.points(), max(end, self.builder.last_ns))
        self.worker.close()
        logging.getLogger("opentelemetry").removeHandler(self._errors)
        self.report(self.summary())

    def delivered(self) -> bool:
        w = self.worker
        return w.sent == self.spans and not w.metrics_failed

    def summary(self) -> str:
        w = self.worker
        where = self.options.shown()
        line = f"agentsight: otlp: {w.sent} of {self.spans} spans"
        if w.metric_exporter is not None:
            line += f" and {w.metrics_sent} metric points"
        line += f" sent to {where}"
        lost = []
        in_flight = self.spans - w.sent - w.failed - w.queue_full - w.unsent
        if w.failed:
            lost.append(f"{w.failed} spans not taken by the backend")
        if w.queue_full:
            lost.append(f"{w.queue_full} spans when the export queue was full")
        if w.unsent or in_flight > 0:
            lost.append(f"{w.unsent + max(in_flight, 0)} spans not sent in time at the end")
        if w.metrics_failed:
            lost.append(f"{w.metrics_failed} metric points not taken by the backend")
        if lost:
            line += "; dropped: " + ", ".join(lost)
            cause = self._errors.last if self._errors.specific else _diagnose(where) or self._errors.last
            if cause:
                line += f" ({cause})"
        stats = {k: v for k, v in self.builder.stats.items() if v}
        if stats:
            line += "; " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in stats.items())
        return line



def _diagnose(url: str) -> str | None:
    """Why a backend took nothing, when its exporter did not say: whether
    anything listens at its address at all."""
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=2):
            return None
    except ConnectionRefusedError:
        return "connection refused"
    except socket.timeout:
        return "connecting timed out"
    except OSError as exc:
        return exc.strerror or str(exc)


def export_session(path: str, options: OtlpOptions) -> int:
    """`export SESSION.db --otlp`: the session's spans and metrics, once."""
    from .session import open_session, read_meta, session_events

    options.check()
    db = open_session(path)
    meta = read_meta(db)
    roots = [p for p in meta.get("root_pids") or () if isinstance(p, int)]
    sink = OtlpSink(options, mode="record", roots=lambda: roots, live=False,
                    host=meta.get("host") if isinstance(meta.get("host"), str) else None,
                    start_ns=meta.get("started_ns") if isinstance(meta.get("started_ns"), int) else None)
    batch: list[Any] = []
    for event in session_events(db):
        batch.append(event)
        if len(batch) >= 1024:
            sink.write(batch)
            batch = []
    sink.write(batch)
    sink.close(Outcome(status=str(meta.get("status", "complete"))))
    return 0 if sink.delivered() else 1
