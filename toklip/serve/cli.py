"""``toklip serve``: load one model, bind (loopback by default), and run the app under uvicorn.

The socket is bound before uvicorn starts, so ``--port 0`` works (the chosen port is printed) and a port
already in use is a clear error rather than a traceback. Two lines on stdout tell scripts where and when:
``toklip serve: listening on http://HOST:PORT`` and, after warm-up, ``toklip serve: ready ...``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys

import click

from toklip.serve.settings import ServeSettings

DEFAULTS = {"max_batch": 32, "max_wait_ms": 5.0, "max_queue": 256, "max_concurrency": 128, "max_request_items": 32,
            "max_body_mb": 32.0, "max_image_pixels": 40_000_000, "request_timeout": 60.0}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (port 0: the OS picks a free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise click.ClickException(f"cannot resolve --host {host!r}: {e}") from e
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port") from e
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _load_generator(source: str | None, model: object, model_source: str, tokenizer: str) -> object | None:
    """``--generator``: a GenerateEngine, or a clear error (never a traceback) when it cannot be served."""
    if source is None:
        return None
    import time

    from toklip.core.errors import TokLIPError
    from toklip.serve.generate import load_serving_generator

    t0 = time.perf_counter()
    try:
        engine = load_serving_generator(source, model, served_source=model_source, tokenizer=tokenizer)
    except TokLIPError as e:
        raise click.ClickException(f"--generator {source}: {e}") from e
    info = engine.info
    fused = f", fused {info.fusion}" if info.fusion else ""
    decoder = "the served model" if info.tokenizer == "served" else f"its recorded tokenizer {engine.tokenizer_source}"
    condition = (f"prompts of up to {info.max_prompt_chars} characters" if info.max_prompt_chars
                 else f"{info.num_classes} classes")
    click.echo(f"toklip serve: generator {info.name} ({info.model_type}, {condition}{fused}), "
               f"decoded by {decoder}, loaded in {time.perf_counter() - t0:.1f} s")
    return engine


def _load_vlm(source: str | None, model: object, settings: ServeSettings, *, device: str = "auto",
              dtype: str = "auto") -> object | None:
    """``--vlm``: a ChatEngine on the served model's device and dtype (``model`` None: on ``--device`` /
    ``--dtype``, its TokLIP to be served), or a clear error (never a traceback)."""
    if source is None:
        return None
    import time

    from toklip.core.errors import TokLIPError
    from toklip.model.loading import resolve_device, resolve_dtype
    from toklip.serve.chat import chat_limits, load_serving_vlm

    t0 = time.perf_counter()
    try:
        dev = resolve_device(device)
        engine = load_serving_vlm(source, model, chat_limits(settings), device=dev, dtype=resolve_dtype(dtype, dev))
    except TokLIPError as e:
        raise click.ClickException(f"--vlm {source}: {e}") from e
    info = engine.info
    click.echo(f"toklip serve: chat model {info.name} ({info.image_tokens} image tokens, {info.dtype}), loaded in "
               f"{time.perf_counter() - t0:.1f} s")
    return engine


def _setup_logging(level: str) -> None:
    logger = logging.getLogger("toklip")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())


@click.command("serve")
@click.option("--model", "model_source", default=None,
              help="preset name, config.json, save_pretrained folder, or checkpoint file (with --vlm it may be left "
                   "out: the VLM's own TokLIP is then the served model)")
@click.option("--weights", default=None, help="checkpoint to load into the --model preset/config")
@click.option("--random-weights", is_flag=True, help="serve a preset with random weights even if it has released ones")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind (loopback by default)")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port")
@click.option("--device", default="auto", show_default=True, help="auto (GPU when available), cpu, cuda, cuda:N")
@click.option("--dtype", default="auto", show_default=True,
              help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16; the VQ stays float32")
@click.option("--max-batch", default=DEFAULTS["max_batch"], show_default=True, type=click.IntRange(1),
              help="items per model call")
@click.option("--max-wait-ms", default=DEFAULTS["max_wait_ms"], show_default=True, type=click.FloatRange(0),
              help="how long a request waits for others to share its batch")
@click.option("--max-queue", default=DEFAULTS["max_queue"], show_default=True, type=click.IntRange(1),
              help="items waiting for the model before 503 + Retry-After")
@click.option("--max-concurrency", default=DEFAULTS["max_concurrency"], show_default=True, type=click.IntRange(1),
              help="API requests in flight before 503 + Retry-After")
@click.option("--max-request-items", default=DEFAULTS["max_request_items"], show_default=True,
              type=click.IntRange(1), help="images / texts / grids per request")
@click.option("--max-body-mb", default=DEFAULTS["max_body_mb"], show_default=True, type=click.FloatRange(0.001),
              help="request body limit in MiB")
@click.option("--max-image-pixels", default=DEFAULTS["max_image_pixels"], show_default=True, type=click.IntRange(1),
              help="per image (decompression bombs)")
@click.option("--request-timeout", default=DEFAULTS["request_timeout"], show_default=True,
              type=click.FloatRange(0.001), help="seconds for a whole request, upload included")
@click.option("--decode-threads", default=2, show_default=True, type=click.IntRange(1),
              help="images decoded and preprocessed at once (raise on many-core GPU servers)")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(0.001),
              help="seconds a client may take to send a request's line and headers (slowloris guard)")
@click.option("--keep-alive-timeout", default=5.0, show_default=True, type=click.FloatRange(0.001),
              help="seconds an idle kept-alive connection stays open")
@click.option("--max-connections", default=512, show_default=True, type=click.IntRange(1),
              help="open connections before new ones get 503 + Retry-After")
@click.option("--generator", "generator_source", default=None, metavar="PATH",
              help="also serve POST /v1/generate with this generator (c2i, or t2i with its recorded caption encoder; a "
                   "save_generator folder or a training run)")
@click.option("--generator-tokenizer", default="auto", show_default=True,
              type=click.Choice(["auto", "served", "recorded"]),
              help="what decodes the generator's codes: the served model (served), the tokenizer its folder records "
                   "(recorded), or the served model when it is that one (auto)")
@click.option("--max-generate-images", default=16, show_default=True, type=click.IntRange(1),
              help="images one /v1/generate request may ask for")
@click.option("--vlm", "vlm_source", default=None, metavar="PATH",
              help="also serve POST /v1/chat with this VLM (a VLM.save_pretrained folder or a vlm training run)")
@click.option("--max-chat-tokens", default=512, show_default=True, type=click.IntRange(1),
              help="new tokens one /v1/chat request may ask for")
@click.option("--api-key-env", default=None, metavar="VAR",
              help="require the API key held in environment variable VAR (never pass keys on the command line)")
@click.option("--cors-origin", "cors_origins", multiple=True, help="allow this browser origin (CORS is off by default)")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--access-log/--no-access-log", default=True, show_default=True)
@click.option("--graceful-timeout", default=30.0, show_default=True, type=click.FloatRange(0),
              help="seconds to let in-flight requests finish on SIGTERM/Ctrl-C")
def serve_command(
    model_source: str | None, weights: str | None, random_weights: bool, host: str, port: int, device: str,
    dtype: str, max_batch: int, max_wait_ms: float, max_queue: int, max_concurrency: int, max_request_items: int,
    max_body_mb: float, max_image_pixels: int, request_timeout: float, decode_threads: int, header_timeout: float,
    keep_alive_timeout: float, max_connections: int, generator_source: str | None, generator_tokenizer: str,
    max_generate_images: int, vlm_source: str | None, max_chat_tokens: int, api_key_env: str | None,
    cors_origins: tuple[str, ...],
    log_level: str, access_log: bool, graceful_timeout: float,
) -> None:
    """Serve tokenize / embed / similarity / decode (and, with --generator, generate; with --vlm, chat) over
    HTTP, with a page for people at /. A generator is served beside --model; a VLM too, or alone (its own
    TokLIP is then the served model)."""
    from toklip.core.errors import ConfigError

    if model_source is None and vlm_source is None:
        raise click.UsageError("give --model (a preset, config.json, folder or checkpoint), or --vlm PATH to serve a "
                               "VLM and its TokLIP")
    if model_source is None and (weights or random_weights):
        raise click.UsageError("--weights and --random-weights go with --model; without --model the VLM's own "
                               "TokLIP is served as the VLM folder records it")
    _setup_logging(log_level)
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise click.UsageError(f"--api-key-env {api_key_env}: that environment variable is not set or empty")
    try:
        settings = ServeSettings(
            max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, max_concurrency=max_concurrency,
            max_request_items=max_request_items, max_body_bytes=int(max_body_mb * 1024 * 1024),
            max_image_pixels=max_image_pixels, request_timeout_s=request_timeout, decode_threads=decode_threads,
            header_timeout_s=header_timeout, keep_alive_timeout_s=keep_alive_timeout, max_connections=max_connections,
            max_generate_images=max_generate_images, max_chat_tokens=max_chat_tokens, api_key=api_key,
            cors_origins=cors_origins,
        )
    except ConfigError as e:
        raise click.UsageError(str(e)) from e
    if not _is_loopback(host) and api_key is None:
        click.echo(f"warning: binding {host} without --api-key-env: anyone who can reach this address can use the "
                   "model", err=True)

    sock = bind_socket(host, port)  # before the slow model load, so a busy port fails fast
    try:
        _run(sock, settings, model_source, weights, random_weights, device, dtype, log_level, access_log,
             graceful_timeout, generator_source, generator_tokenizer, vlm_source)
    finally:
        sock.close()


def _run(sock: socket.socket, settings: ServeSettings, model_source: str | None, weights: str | None,
         random_weights: bool, device: str, dtype: str, log_level: str, access_log: bool,
         graceful_timeout: float, generator_source: str | None = None, generator_tokenizer: str = "auto",
         vlm_source: str | None = None) -> None:
    import time

    import uvicorn

    from toklip.serve.app import create_app
    from toklip.serve.protocol import uvicorn_config
    from toklip.model.loading import load_model

    t0 = time.perf_counter()
    if model_source is None:  # the VLM's TokLIP is the served model: one copy in memory
        vlm = _load_vlm(vlm_source, None, settings, device=device, dtype=dtype)
        model = vlm.vlm.toklip  # type: ignore[union-attr]
        model_source = vlm.vlm.config.tokenizer.get("source") or ""  # type: ignore[union-attr]
        what = "the VLM's TokLIP"
    else:
        model = load_model(model_source, weights=weights, random_weights=random_weights, device=device, dtype=dtype)
        vlm, what = None, "model"
    url = _url(sock)
    click.echo(f"toklip serve: {what} {model.config.name or model_source} on {model.device} ({model.dtype}), "
               f"loaded in {time.perf_counter() - t0:.1f} s")
    generator = _load_generator(generator_source, model, model_source, generator_tokenizer)
    if vlm is None:
        vlm = _load_vlm(vlm_source, model, settings)

    def on_ready(seconds: float) -> None:
        click.echo(f"toklip serve: ready on {url} (warm-up {seconds:.2f} s; page at /, API docs at /docs)")
        sys.stdout.flush()

    app = create_app(model, settings, on_ready=on_ready, generator=generator, vlm=vlm)
    config = uvicorn_config(app, settings, log_level=log_level, access_log=access_log, lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout)
    server = uvicorn.Server(config)
    click.echo(f"toklip serve: listening on {url}")
    sys.stdout.flush()
    server.run(sockets=[sock])
    if not server.started:
        raise click.ClickException("the server did not start (see the log above)")
