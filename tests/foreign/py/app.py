"""A wasi:http/incoming-handler guest for Seal, built with componentize-py.

Build (see scripts/build-foreign-guests):
    componentize-py -d tests/foreign/wit -w http-guest componentize app \
        -p tests/foreign/py -o target/foreign-guests/hello-py.wasm

Answers every request with 200 text/plain
`Hello from Python! path=<path_with_query>`.
"""

from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)
from componentize_py_types import Ok

# blocking-write-and-flush takes at most 4096 bytes per call.
CHUNK = 4096


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        body = f"Hello from Python! path={path}".encode("utf-8")

        headers = Fields.from_list(
            [
                ("content-type", b"text/plain"),
                ("content-length", str(len(body)).encode("ascii")),
            ]
        )
        response = OutgoingResponse(headers)
        response.set_status_code(200)
        outgoing_body = response.body()
        ResponseOutparam.set(response_out, Ok(response))

        # The stream is a child of the body: leaving the `with` drops it, which
        # must happen before the body is finished.
        with outgoing_body.write() as stream:
            for start in range(0, len(body), CHUNK):
                stream.blocking_write_and_flush(body[start : start + CHUNK])
        OutgoingBody.finish(outgoing_body, None)
