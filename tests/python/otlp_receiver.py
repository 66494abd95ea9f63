"""An independent OTLP/gRPC trace receiver for the tracing tests.

Serves opentelemetry.proto.collector.trace.v1.TraceService/Export with Python's grpcio and the
`opentelemetry-proto` package's generated messages (nothing shared with the proxy's Rust
code). Prints `PORT <n>` once listening, then one JSON line per received span on stdout.

Modes (argv[1]): `ok` (accept), `slow` (each call waits argv[2] seconds first), `fail` (every
call is UNAVAILABLE), `count` (accept, print nothing per span; on SIGTERM or SIGINT print
`SPANS <n>`: for benchmarks).
"""

import json
import signal
import sys
import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, mode, delay):
        self.mode = mode
        self.delay = delay
        # Calls are served on several threads: one call's lines are written whole.
        self.out = threading.Lock()
        self.count = 0

    def Export(self, request, context):
        if self.mode == "slow":
            time.sleep(self.delay)
        if self.mode == "fail":
            context.abort(grpc.StatusCode.UNAVAILABLE, "failing on purpose")
        if self.mode == "count":
            n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            with self.out:
                self.count += n
            return trace_service_pb2.ExportTraceServiceResponse()
        lines = []
        for rs in request.resource_spans:
            resource = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    line = {
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": s.kind,
                        "flags": s.flags,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "status": s.status.code,
                        "scope": ss.scope.name,
                        "resource": resource,
                        "attrs": {a.key: value(a.value) for a in s.attributes},
                    }
                    lines.append(json.dumps(line) + "\n")
        with self.out:
            sys.stdout.write("".join(lines))
            sys.stdout.flush()
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    receiver = Receiver(mode, delay)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)

    def stop(*_):
        print(f"SPANS {receiver.count}", flush=True)
        server.stop(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
