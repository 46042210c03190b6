"""Command line: python -m agentsight COMMAND ..."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from . import __version__
from .errors import AgentsightError

DEFAULT_RING_SIZE = 8 << 20  # its pages are mapped twice: 16 MiB of memory
DEFAULT_WAKEUP_BYTES = 256 << 10


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 65536, 256K, 8M)") from None


def _add_common(p: argparse.ArgumentParser, redact: bool = True) -> None:
    p.add_argument("-o", "--output", metavar="FILE", help="write JSON lines here instead of stdout")
    p.add_argument("--overwrite", action="store_true", help="replace the output files if they exist")
    p.add_argument("--ring-size", type=_size, default=DEFAULT_RING_SIZE, metavar="SIZE",
                   help="ring buffer size per BPF object, a power of two (default: 8M)")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
    if redact:
        p.add_argument("--no-redact", action="store_true",
                       help="keep API keys, tokens, cookies and passwords in the output")


def _add_otlp(p: argparse.ArgumentParser) -> None:
    p.add_argument("--otlp", nargs="?", const="", metavar="URL",
                   help="also send OpenTelemetry GenAI traces and metrics to this OTLP endpoint (base URL, e.g. "
                   "http://collector:4318; without URL: OTEL_EXPORTER_OTLP_ENDPOINT); needs agentsight[otlp]")
    p.add_argument("--otlp-content", action="store_true",
                   help="with --otlp: include the messages, tool arguments and tool results (redacted)")


def _otlp_options(args):
    """OtlpOptions for --otlp, or None; checked before anything starts."""
    if getattr(args, "otlp", None) is None:
        if getattr(args, "otlp_content", False):
            raise AgentsightError("--otlp-content needs --otlp", exit_code=2)
        return None
    from .sinks.otlp import OtlpOptions

    options = OtlpOptions(endpoint=args.otlp or None, content=args.otlp_content)
    options.check()
    return options


_HOLD_HELP = ("hold each program started while running whose TLS code is not hooked yet (the first run of a "
              "new build) until it is, so none of its TLS calls is missed; held programs pause for the analysis, "
              "a few hundred ms at most, and run on if agentsight stops")


def _add_web(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, help="port of the web UI (default: 7396; 0: any free port)")
    p.add_argument("--host", help="address to listen on (default: 127.0.0.1, this machine only)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentsight",
        description="Zero-instrumentation observability for AI agents, with eBPF. "
        "Capture commands need root and print one JSON object per line until Ctrl-C.",
    )
    parser.add_argument("--version", action="version", version=f"agentsight {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ssl = sub.add_parser("ssl", help="capture TLS plaintext (OpenSSL, BoringSSL, GnuTLS)",
                         description="Capture the plaintext of TLS reads and writes, as JSON lines.")
    ssl.add_argument("--pid", type=int, help="only this process")
    ssl.add_argument("--comm", help="only tasks with this name (as in /proc/PID/comm)")
    ssl.add_argument("--uid", type=int, help="only this user id")
    ssl.add_argument("--binary", metavar="PATH", help="hook this file only, instead of discovering TLS libraries")
    ssl.add_argument("--max-capture", type=_size, default=1 << 20, metavar="SIZE",
                     help="bytes captured per call at most; the rest is reported as truncated (default: 1M)")
    ssl.add_argument("--hold", action="store_true", help=_HOLD_HELP)
    _add_common(ssl)

    probes = sub.add_parser("probes", help="list the TLS libraries found and the functions hooked in each",
                            description="List every file with a TLS library that `ssl` would hook: the kind "
                            "recognised and each function's file offset. Run this first when traffic is missing.")
    probes.add_argument("--pid", type=int, help="only the files this process runs and maps")
    probes.add_argument("--binary", metavar="PATH", action="append", help="analyse this file (repeatable)")
    probes.add_argument("--json", action="store_true", help="one JSON document instead of a table")

    trace = sub.add_parser("trace", help="capture and analyse: LLM calls, HTTP exchanges, process activity",
                           description="Capture TLS and process activity and print what it means: one llm_call "
                           "per LLM API call, one http event per other HTTP exchange, and the process events.")
    trace.add_argument("--pid", type=int, help="only this process")
    trace.add_argument("--comm", help="only tasks with this name")
    trace.add_argument("--uid", type=int, help="only this user id")
    trace.add_argument("--no-open", action="store_true", help="leave out file opens")
    trace.add_argument("--raw", metavar="FILE", help="also keep the raw events here, for `replay`")
    trace.add_argument("--max-capture", type=_size, default=1 << 20, metavar="SIZE",
                       help="bytes captured per TLS call at most (default: 1M)")
    trace.add_argument("--hold", action="store_true", help=_HOLD_HELP)
    _add_common(trace)
    _add_otlp(trace)

    replay = sub.add_parser("replay", help="analyse a file written by ssl, process or trace --raw",
                            description="Run the analyzers over raw events recorded earlier (no root needed).")
    replay.add_argument("file", metavar="RAW.jsonl", help="raw events, one JSON object per line ('-': stdin)")
    replay.add_argument("-o", "--output", metavar="FILE", help="write JSON lines here instead of stdout")
    replay.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    replay.add_argument("--no-redact", action="store_true",
                        help="keep API keys, tokens, cookies and passwords in the output")

    record = sub.add_parser(
        "record", help="run or attach to an agent and record everything it does in a session file",
        description="Record an agent and every process it starts: its LLM calls, the commands it runs, the "
        "files it changes and the connections it opens, into one SQLite file. `record -- CMD` runs CMD as "
        "the user who invoked sudo and exits with CMD's status.",
        usage="%(prog)s [-o SESSION.db] [--otlp [URL]] [--serve [--port PORT] [--host HOST]] (-- CMD [ARGS...] | "
        "--pid PID | --comm NAME)")
    record.add_argument("-o", "--output", metavar="SESSION.db",
                        help="session file to create (default: agentsight-DATE-TIME.db here)")
    record.add_argument("--overwrite", action="store_true", help="replace the session file if it exists")
    who = record.add_mutually_exclusive_group()
    who.add_argument("--pid", type=int, help="attach to this running process and its descendants")
    who.add_argument("--comm", help="attach to processes with this name, and those started later")
    record.add_argument("--no-live", action="store_true", help="no status line on the terminal")
    record.add_argument("--no-hold", action="store_true",
                        help="do not hold programs whose TLS code is not hooked yet; their first calls may be missed")
    record.add_argument("--ring-size", type=_size, default=DEFAULT_RING_SIZE, metavar="SIZE",
                        help="ring buffer size per BPF object, a power of two (default: 8M)")
    _add_otlp(record)
    record.add_argument("--serve", action="store_true",
                        help="show the recording in the browser as it happens (and after, until Ctrl-C)")
    _add_web(record)
    record.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]",
                        help="the command to run and record")

    report = sub.add_parser("report", help="what happened in a recorded session, for a person",
                            description="LLM calls with the commands and file changes their tool calls "
                            "caused, activity no tool call explains, and totals.")
    report.add_argument("session", metavar="SESSION.db")
    report.add_argument("--json", action="store_true", help="the same as one JSON document")

    serve = sub.add_parser("serve", help="see recorded sessions in the browser",
                           description="A web UI on a local port: the timeline of LLM calls, tool calls, commands "
                           "and file changes, the process tree, and each LLM call's conversation. It prints the "
                           "address to open, which carries an access token.")
    serve.add_argument("sessions", nargs="+", metavar="SESSION.db")
    _add_web(serve)

    export = sub.add_parser("export", help="every event of a session as JSON lines, or its traces to OTLP (--otlp)")
    export.add_argument("session", metavar="SESSION.db")
    export.add_argument("-o", "--output", metavar="FILE.jsonl", help="write here instead of stdout")
    export.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    _add_otlp(export)

    proc = sub.add_parser("process", help="capture exec, exit, fork and file opens",
                          description="Capture process activity, as JSON lines.")
    proc.add_argument("--pid", type=int, help="only this process")
    proc.add_argument("--comm", help="only tasks with this name")
    proc.add_argument("--no-open", action="store_true", help="leave out file opens")
    _add_common(proc)
    return parser


def _wakeup_bytes(ring_size: int) -> int:
    # The consumer must be woken well before the ring fills.
    return min(DEFAULT_WAKEUP_BYTES, ring_size // 4)


def _ready(description: str) -> None:
    print(f"ready: {description}", file=sys.stderr, flush=True)


def _note(text: str) -> None:
    print(f"agentsight: note: {text}", file=sys.stderr)


def run_pipeline(pipeline, duration: float | None = None, live: bool = True) -> int:
    """Runs a pipeline the way the capture commands do: SIGINT and SIGTERM
    stop it, and a summary of what was seen and lost goes to stderr."""
    import signal

    from .collectors.live import print_losses

    def on_signal(signum, _frame):
        pipeline.stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    interval = sys.getswitchinterval()
    if live:
        # The TLS notice thread must get the interpreter quickly even while
        # this one analyses a large batch (default: every 5 ms).
        sys.setswitchinterval(0.001)
    try:
        outcome = pipeline.run(ready=_ready if live else None, duration=duration)
    finally:
        sys.setswitchinterval(interval)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if live:
        print_losses(outcome.seconds, outcome.counts, outcome.losses)
    report_outcome(pipeline, outcome)
    return 0


def report_outcome(pipeline, outcome) -> None:
    capture_keys = ("ring_full_records", "ring_full_bytes", "truncated_bytes", "bad_records", "read_faults",
                    "calls_missed", "unmatched_records")
    for note in pipeline.source.notes():
        _note(note)
    if pipeline.analysis is not None:
        shown = {k: v for k, v in sorted(outcome.stats.items()) if v and not k.startswith("events.")}
        line = ", ".join(f"{k} {v}" for k, v in shown.items()) or "nothing skipped"
        print(f"agentsight: analysis: {line}", file=sys.stderr)
    other = {k: v for k, v in outcome.losses.items() if k not in capture_keys and not k.startswith("bad_record: ")}
    if other:
        print("agentsight: also lost or cut: " + ", ".join(f"{k} {v}" for k, v in sorted(other.items())),
              file=sys.stderr)


def _redact_warning(args) -> bool:
    redact = not getattr(args, "no_redact", False)
    if not redact:
        print("agentsight: warning: --no-redact: API keys, tokens, cookies and passwords will appear in the output",
              file=sys.stderr)
    return redact


def _capture(collectors, args, analyse: bool):
    """The pipeline of a live capture command."""
    from .analyzers import Analysis
    from .analyzers.correlate import Correlator
    from .collectors.live import LiveCapture
    from .pipeline import Pipeline
    from .sinks.base import DERIVED_KINDS, PROCESS_KINDS, RAW_KINDS, Sink
    from .sinks.jsonl import JsonLinesSink

    redact = _redact_warning(args)
    if not analyse:
        return Pipeline(LiveCapture(collectors), [JsonLinesSink(args.output, RAW_KINDS, args.overwrite)], redact=redact)
    sinks: list[Sink] = [JsonLinesSink(args.output, PROCESS_KINDS | DERIVED_KINDS, args.overwrite)]
    if getattr(args, "raw", None):
        # The raw file is masked too, keeping byte counts so it still replays.
        sinks.append(JsonLinesSink(args.raw, RAW_KINDS, args.overwrite))
    otlp = _otlp_options(args)
    if otlp is not None:
        from .sinks.otlp import OtlpSink

        sinks.append(OtlpSink(otlp, mode="trace"))
    return Pipeline(LiveCapture(collectors), sinks, analysis=Analysis(), correlator=Correlator(), redact=redact)


def cmd_ssl(args) -> int:
    from .collectors.base import Filters
    from .collectors.ssl import SslCollector

    filters = Filters(pid=args.pid, uid=args.uid, comm=args.comm)
    collector = SslCollector(filters, args.ring_size, _wakeup_bytes(args.ring_size), args.max_capture, args.binary,
                             hold=args.hold)
    return run_pipeline(_capture([collector], args, analyse=False), args.duration)


def cmd_process(args) -> int:
    from .collectors.base import Filters
    from .collectors.process import ProcessCollector

    filters = Filters(pid=args.pid, comm=args.comm)
    collector = ProcessCollector(filters, args.ring_size, _wakeup_bytes(args.ring_size), opens=not args.no_open)
    return run_pipeline(_capture([collector], args, analyse=False), args.duration)


def cmd_probes(args) -> int:
    import orjson

    from .collectors.tls.discovery import Discovery

    discovery = Discovery()
    if os.geteuid() != 0 and not args.binary:
        print("agentsight: not root: other users' processes are not visible", file=sys.stderr)
    if args.binary:
        files = []
        for path in args.binary:
            try:
                files.append(discovery.binary(path))
            except AgentsightError as exc:
                discovery.notes.append(exc.message)
    elif args.pid:
        files = discovery.scan_process(args.pid)
    else:
        files = discovery.initial()
    found: list[dict[str, Any]] = [
        {
            "path": f.shown_path,
            "kind": f.kind,
            "method": f.library.how_found,
            "build_id": f.library.build_id,
            "functions": {name: offset for name, offset in sorted(f.library.functions.items(), key=lambda x: x[1])},
            "returns": f.library.returns,
            "pids": sorted(f.pids),
            "analysis_seconds": round(f.library.analysis_seconds, 3),
            "from_cache": f.library.from_cache,
            "identified_by": f.library.evidence,
        }
        for f in files
    ]
    if args.json:
        sys.stdout.buffer.write(orjson.dumps({"files": found, "notes": discovery.notes,
                                              "failures": discovery.failures}, option=orjson.OPT_INDENT_2))
        sys.stdout.write("\n")
    else:
        for f in found:
            pids = ", ".join(map(str, f["pids"][:8])) + (" ..." if len(f["pids"]) > 8 else "")
            how = "from cache" if f["from_cache"] else f"analysed in {f['analysis_seconds']:.3f} s"
            print(f"{f['path']}\n  kind: {f['kind']}   build id: {f['build_id'] or '-'}   ({how})"
                  + f"\n  found by: {f['method']}" + (f"\n  used by pids: {pids}" if pids else ""))
            for name, offset in f["functions"].items():
                rets = f["returns"].get(name)
                at_returns = f"   returns at {', '.join(f'{r:#x}' for r in rets)}" if rets else ""
                print(f"    {name:<26} offset {offset:#x}{at_returns}")
                if name in f["identified_by"]:
                    print(f"      identified: {f['identified_by'][name]}")
        if not found:
            print("no TLS library found")
    for note in discovery.notes:
        print(f"agentsight: note: {note}", file=sys.stderr)
    discovery.close()
    return 0


def cmd_trace(args) -> int:
    from .collectors.base import Filters
    from .collectors.process import ProcessCollector
    from .collectors.ssl import SslCollector

    filters = Filters(pid=args.pid, uid=args.uid, comm=args.comm)
    wakeup = _wakeup_bytes(args.ring_size)
    process = ProcessCollector(filters, args.ring_size, wakeup, opens=not args.no_open)
    # One ring for both: each ring's pages are mapped twice into this process.
    ssl = SslCollector(filters, args.ring_size, wakeup, args.max_capture,
                       shared_maps=lambda: {"events": process.objects[0].map_fd("events")}, hold=args.hold)
    return run_pipeline(_capture([process, ssl], args, analyse=True), args.duration)


def cmd_replay(args) -> int:
    from .analyzers import Analysis
    from .analyzers.correlate import Correlator
    from .collectors.recorded import RecordedEvents
    from .pipeline import Pipeline
    from .sinks.base import DERIVED_KINDS, PROCESS_KINDS
    from .sinks.jsonl import JsonLinesSink

    redact = _redact_warning(args)
    source = RecordedEvents(args.file)
    try:
        sink = JsonLinesSink(args.output, PROCESS_KINDS | DERIVED_KINDS, args.overwrite)
    except BaseException:
        source.close()
        raise
    pipeline = Pipeline(source, [sink], analysis=Analysis(), correlator=Correlator(), redact=redact)
    return run_pipeline(pipeline, live=False)


def cmd_record(args) -> int:
    import time

    from .record import Recording, RecordOptions

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if bool(command) + (args.pid is not None) + (args.comm is not None) != 1:
        raise AgentsightError("record needs exactly one of: -- CMD [ARGS...], --pid PID, --comm NAME", exit_code=2)
    output = args.output or time.strftime("agentsight-%Y%m%d-%H%M%S.db")
    opts = RecordOptions(output=output, command=command or None, pid=args.pid, comm=args.comm,
                         ring_size=args.ring_size, wakeup_bytes=_wakeup_bytes(args.ring_size),
                         live=not args.no_live, overwrite=args.overwrite,
                         hold=not args.no_hold)
    otlp = _otlp_options(args)
    if not args.serve and (args.port is not None or args.host is not None):
        raise AgentsightError("--port and --host are options of --serve", exit_code=2)

    def recording_with(sinks: list) -> Recording:
        sinks = list(sinks)
        if otlp is not None:
            from .sinks.otlp import OtlpSink

            sink = OtlpSink(otlp, mode="record")
            sinks.append(sink)
        recording = Recording(opts, extra_sinks=sinks)
        if otlp is not None:
            sink.roots = lambda: recording.root_pids
        return recording

    if args.serve:
        from .ui.web.server import DEFAULT_PORT, record_and_serve

        return record_and_serve(recording_with, output, args.host or "127.0.0.1",
                                DEFAULT_PORT if args.port is None else args.port)
    return recording_with([]).run()


def cmd_report(args) -> int:
    import orjson

    from .sinks.session import open_session
    from .ui.report import build_report, render_text

    report = build_report(open_session(args.session), args.session)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        sys.stdout.write(render_text(report))
    return 0


def cmd_serve(args) -> int:
    from .ui.web.server import DEFAULT_PORT, serve_sessions

    return serve_sessions(args.sessions, args.host or "127.0.0.1", DEFAULT_PORT if args.port is None else args.port)


def cmd_export(args) -> int:
    otlp = _otlp_options(args)
    if otlp is not None:
        if args.output:
            raise AgentsightError("export writes JSON lines (-o) or sends to OTLP (--otlp), not both", exit_code=2)
        from .sinks.otlp import export_session

        return export_session(args.session, otlp)

    from .sinks.session import open_session
    from .ui.report import export_events

    from .sinks.files import create_private

    db = open_session(args.session)
    try:
        if args.output:
            with os.fdopen(create_private(args.output, args.overwrite), "wb") as out:
                n = export_events(db, out)
        else:
            n = export_events(db, sys.stdout.buffer)
            sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        raise AgentsightError(f"cannot write {args.output or 'stdout'}: {exc.strerror}") from None
    print(f"agentsight: exported {n} events", file=sys.stderr)
    return 0


COMMANDS = {"ssl": cmd_ssl, "process": cmd_process, "probes": cmd_probes, "trace": cmd_trace,
            "replay": cmd_replay, "record": cmd_record, "report": cmd_report, "export": cmd_export,
            "serve": cmd_serve}
NEEDS_BPF = {"ssl", "process", "trace", "record"}


# Library parameters whose option is not simply the same name with dashes.
OPTION_OF = {"endpoint": "--otlp"}


def _as_cli_error(exc: AgentsightError) -> str:
    if not exc.parameter:
        return exc.message
    return f"{OPTION_OF.get(exc.parameter) or '--' + exc.parameter.replace('_', '-')} {exc.message}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    if getattr(args, "pid", None) is not None and not os.path.exists(f"/proc/{args.pid}"):
        print(f"agentsight: --pid {args.pid}: no such process", file=sys.stderr)
        return 2
    try:
        if args.command in NEEDS_BPF:
            # Before importing anything heavy, so the answer does not depend on it.
            from .bpf.preflight import check_can_trace

            check_can_trace()
        return COMMANDS[args.command](args)
    except AgentsightError as exc:
        print(f"agentsight: {_as_cli_error(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
