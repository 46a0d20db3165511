"""HTTP endpoint throughput: ``POST /v1/models/<trivial>/predict`` against a bare FastAPI echo endpoint.

``python -m bench.http [--quick] [--json]``

Both apps run in their own uvicorn process with the same settings (one worker,
access log off) and get the same JSON body from the same load generator (a
minimal asyncio HTTP/1.1 client with 16 keep-alive connections). Phases alternate echo, predict,
echo, predict so that drift of the shared machine falls on both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from rich.console import Console

from bench.harness import Progress, command_line, figures_table, ratio, start, wait_until
from bench.trivial import FEATURES, NAME, build_trivial_model_dir
from sdk.mosquitto import free_port

__all__ = ["echo_app", "main", "run"]

CONCURRENCY = 16
UVICORN = {"log_level": "warning", "access_log": False}


def echo_app() -> FastAPI:
    """A bare FastAPI app whose one route returns the JSON body it was sent."""
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/json")

    return app


def serve(kind: str, port: int, model_dir: Path | None) -> None:
    """Run one of the two apps under uvicorn until killed."""
    import uvicorn

    if kind == "echo":
        app = echo_app()
    else:
        from sdk.cloud.app import create_app
        from sdk.cloud.inference import load_services

        app = create_app(load_services([model_dir], providers=("cpu",)))
    uvicorn.run(app, host="127.0.0.1", port=port, **UVICORN)


async def load(url: str, body: bytes, seconds: float) -> float:
    """Requests per second that ``CONCURRENCY`` keep-alive connections get from ``url`` in ``seconds``.

    A minimal HTTP/1.1 client on asyncio streams: httpx costs more CPU per request than
    the servers under test, and on two cores the load generator must be the cheap side.
    """
    target = httpx.URL(url)
    request = (
        f"POST {target.raw_path.decode()} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    done = 0
    stop_at = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(target.host, target.port)
        try:
            while time.perf_counter() < stop_at:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"{url}: {head.splitlines()[0].decode()}")
                lines = head.lower().split(b"\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length"))
                await reader.readexactly(length)
                done += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(CONCURRENCY)))
    return done / (time.perf_counter() - t0)


def run(seconds: float, rounds: int, step: Progress) -> dict[str, Any]:
    """Start both servers, load each in alternating phases, and return the report."""
    body = json.dumps({"inputs": [[0.5] * FEATURES]}).encode()
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="fedge-bench-http-"))
        model_dir = build_trivial_model_dir(Path(tmp) / "trivial")
        urls = {}
        for kind in ("echo", "predict"):
            port = free_port()
            proc = start("-m", "bench.http", "--serve", kind, "--port", str(port), "--model-dir", str(model_dir))
            stack.callback(proc.wait, 10)
            stack.callback(proc.terminate)
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda base=base: httpx.get(f"{base}/docs", timeout=1).raise_for_status(), f"{kind} server")
            urls[kind] = f"{base}/echo" if kind == "echo" else f"{base}/v1/models/{NAME}/predict"
        for url in urls.values():
            asyncio.run(load(url, body, 1.0))  # warm-up
        rps: dict[str, list[float]] = {kind: [] for kind in urls}
        for r in range(rounds):
            for kind, url in urls.items():
                step(f"round {r + 1}/{rounds}: {kind} for {seconds:.0f} s")
                rps[kind].append(asyncio.run(load(url, body, seconds)))
    echo, predict = (sum(v) / len(v) for v in (rps["echo"], rps["predict"]))
    return {
        "rps_ratio": ratio(predict, echo),
        "predict_rps": round(predict, 1),
        "echo_rps": round(echo, 1),
        "concurrency": CONCURRENCY,
        "body_bytes": len(body),
        "wall_s": round(time.time() - step.start, 1),
    }


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as a table."""
    title = f"HTTP predict vs bare FastAPI echo, {report['concurrency']} in flight"
    console.print(figures_table(title, report, ("rps_ratio", "predict_rps", "echo_rps", "body_bytes")))


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--serve", choices=("echo", "predict"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)


def _server_mode(args: argparse.Namespace) -> bool:
    if args.serve:
        serve(args.serve, args.port, args.model_dir)
        return True
    return False


main = command_line(
    "python -m bench.http",
    __doc__,
    quick_help="two 5 s rounds instead of three 15 s rounds",
    run=lambda args, step: run(5.0 if args.quick else 15.0, 2 if args.quick else 3, step),
    render=render,
    arguments=_arguments,
    before=_server_mode,
)


if __name__ == "__main__":
    sys.exit(main())
