"""`rankrl serve`: the decision service. A search engine in any language asks for weights and reports outcomes.

    POST /v1/rank         {state, ranking_metadata?, session_id?, log_id?}
                          -> {log_id, weights: {W_COLLAB_POS: …}, log_propensity, policy_version}
    POST /v1/rank/batch   {requests: [rank request, …]} (at most 1,000) -> {results: [response, …]}
    POST /v1/outcome      {log_id, ranking, ranking_metadata?, outcomes, created_at?} -> 202 {log_id}
    GET  /healthz         200 while the process serves
    GET  /readyz          200 when a policy is loaded and both logs are writable, else 503 with the reasons
    GET  /metrics         Prometheus (rankrl_serve_…)

Each decision is logged (serve.decisions) before its response, and each outcome (serve.outcomes) before its
202: a record that cannot be made durable fails the request with 503, never a decision without its record.
Bad input is a 400 naming the field and the log id, with the event validation's reasons (docs/events.md).
The weights are the champion's mean served with its exploration (deploy/serving.py, docs/serving-contract.md);
with no champion yet, serve.default_weights with the configured exploration. A reload thread swaps in a new
champion between requests. The service is stateless apart from the registry it reads: run as many as you like
behind a load balancer. Starlette on uvicorn, one event loop; the policy runs inline (~0.1 ms for one search).
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.config import RankrlConfig
from common.decisions import (
    Decision,
    Outcome,
    RankBatch,
    RankRequest,
    RankResponse,
    decode,
    encode,
    iso_now,
    parse_outcome,
)
from common.exploration import DirichletExploration
from common.features import state_tuple
from common.schema import ACTION_KEYS, Action, InvalidEvent
from deploy.decision_log import FileLog, KafkaLog, LogUnavailable, RecordLog
from deploy.registry import ModelRegistry
from deploy.serving import ServingPolicy

log = logging.getLogger(__name__)

ENDPOINTS = ("rank", "rank_batch", "outcome", "healthz", "readyz", "metrics")
MAX_BODY_BYTES = 16 << 20  # a full batch of 1,000 searches with candidate lists fits


class ServeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        p = "rankrl_serve_"
        self.duration = Histogram(
            p + "request_duration_seconds",
            "Request latency by endpoint, logging included",
            ["endpoint"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.requests = Counter(p + "requests", "Requests by endpoint and status code", ["endpoint", "code"],
                                registry=registry)  # fmt: skip
        self.decisions = Counter(p + "decisions_logged", "Decisions made durable", registry=registry)
        self.outcomes = Counter(p + "outcomes_logged", "Outcomes made durable", registry=registry)
        self.log_failures = Counter(p + "log_failures", "Requests failed because their record could not be logged",
                                    ["log"], registry=registry)  # fmt: skip
        self.invalid = Counter(p + "invalid_requests", "Requests refused as invalid, by reason", ["reason"],
                               registry=registry)  # fmt: skip
        self.policy = Gauge(p + "policy_info", "The policy version being served (1 for the current one)", ["version"],
                            registry=registry)  # fmt: skip
        self.reloads = Counter(p + "policy_reloads", "Champion changes picked up without a restart", registry=registry)
        for e in ENDPOINTS:
            self.duration.labels(endpoint=e)
        for name in ("decisions", "outcomes"):
            self.log_failures.labels(log=name)
        self._version: str | None = None

    def serving(self, version: str) -> None:
        if version != self._version:
            if self._version is not None:
                self.policy.remove(self._version)
            self.policy.labels(version=version).set(1)
            self._version = version


def open_log(url: str, cfg: RankrlConfig) -> RecordLog:
    """A decision or outcome log from its URL: file://PATH or kafka://HOST:PORT/TOPIC."""
    if url.startswith("file://"):
        return FileLog(url[len("file://") :])
    from streamer.daemon import kafka_settings

    settings = kafka_settings(cfg, url)
    return KafkaLog(settings.client_kwargs(), settings.topic, settings.bootstrap_timeout_ms)


class DecisionService:
    """The routes over a policy and two logs (built by `create_app`; tests build it with their own logs)."""

    def __init__(
        self,
        cfg: RankrlConfig,
        policy: ServingPolicy,
        decisions: RecordLog,
        outcomes: RecordLog,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.cfg = cfg
        self.policy = policy
        self.decisions = decisions
        self.outcomes = outcomes
        self.registry = registry or CollectorRegistry()
        self.metrics = ServeMetrics(self.registry)
        self.metrics.serving(str(policy.version))
        self._stop = threading.Event()
        self._reloader: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ lifecycle
    def start_reloader(self) -> None:
        def run() -> None:
            while not self._stop.wait(self.cfg.serve.reload_interval_s):
                try:
                    if self.policy.refresh():
                        self.metrics.reloads.inc()
                    self.metrics.serving(str(self.policy.version))
                except Exception as e:  # a damaged new version: keep serving the loaded one, say so
                    log.error("serve: cannot load the new champion (still serving %s): %s", self.policy.version, e)

        self._reloader = threading.Thread(target=run, name="serve-reload", daemon=True)
        self._reloader.start()

    def close(self) -> None:
        self._stop.set()
        if self._reloader is not None:
            self._reloader.join(timeout=5)
        self.decisions.close()
        self.outcomes.close()

    # ------------------------------------------------------------------------------------------ helpers
    def _timed(self, endpoint: str, handler: Callable[[Request], Awaitable[Response]]) -> Callable[..., Any]:
        async def run(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                response = await handler(request)
            except InvalidEvent as e:
                self.metrics.invalid.labels(reason=e.reason).inc()
                response = JSONResponse(
                    {"error": "invalid_request", "reason": e.reason, "field": e.field, "log_id": e.log_id,
                     "detail": str(e)},
                    status_code=400,
                )  # fmt: skip
            except LogUnavailable as e:
                log.error("serve %s: %s", endpoint, e)
                response = JSONResponse({"error": "log_unavailable", "detail": str(e)}, status_code=503)
            self.metrics.requests.labels(endpoint=endpoint, code=str(response.status_code)).inc()
            self.metrics.duration.labels(endpoint=endpoint).observe(time.perf_counter() - t0)
            return response

        return run

    @staticmethod
    async def _body(request: Request) -> bytes:
        size = int(request.headers.get("content-length") or 0)
        if size > MAX_BODY_BYTES:
            raise InvalidEvent("too_large", "$", f"request body of {size} bytes (limit {MAX_BODY_BYTES})")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise InvalidEvent("too_large", "$", f"request body of {len(body)} bytes (limit {MAX_BODY_BYTES})")
        return body

    async def _decide(self, requests: list[RankRequest]) -> list[RankResponse]:
        states = np.array([state_tuple(r.state, r.ranking_metadata) for r in requests], dtype=np.float32)
        if not np.isfinite(states).all():
            raise InvalidEvent("not_finite", "state", "a feature is not finite")
        weights, logp, version = self.policy.act_batch(states)
        now = iso_now()
        records, out = [], []
        for r, w, lp in zip(requests, weights, logp, strict=True):
            log_id = r.log_id or uuid.uuid4().hex
            ws = [float(x) for x in w]
            d = Decision(log_id, now, r.state, Action(*ws), float(lp), version, r.ranking_metadata, r.session_id)
            records.append((log_id.encode(), encode(d)))
            out.append(RankResponse(log_id, dict(zip(ACTION_KEYS, ws, strict=True)), float(lp), version))
        try:
            await self.decisions.write(records, self.cfg.serve.log_timeout_s)
        except LogUnavailable:
            self.metrics.log_failures.labels(log="decisions").inc(len(records))
            raise
        self.metrics.decisions.inc(len(records))
        return out

    # ------------------------------------------------------------------------------------------ routes
    async def rank(self, request: Request) -> Response:
        req: RankRequest = decode(await self._body(request), RankRequest)
        (resp,) = await self._decide([req])
        return Response(encode(resp), media_type="application/json")

    async def rank_batch(self, request: Request) -> Response:
        batch: RankBatch = decode(await self._body(request), RankBatch)
        results = await self._decide(batch.requests)
        return Response(msgspec.json.encode({"results": results}), media_type="application/json")

    async def outcome(self, request: Request) -> Response:
        out: Outcome = parse_outcome(await self._body(request))
        if out.created_at is None:
            out = msgspec.structs.replace(out, created_at=iso_now())
        try:
            await self.outcomes.write([(out.log_id.encode(), encode(out))], self.cfg.serve.log_timeout_s)
        except LogUnavailable:
            self.metrics.log_failures.labels(log="outcomes").inc()
            raise
        self.metrics.outcomes.inc()
        return JSONResponse({"log_id": out.log_id, "status": "accepted"}, status_code=202)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        problems = [f"{name} log {lg.name} is failing" for name, lg in (("decisions", self.decisions),
                    ("outcomes", self.outcomes)) if not lg.ready()]  # fmt: skip
        body = {"status": "ready" if not problems else "not_ready", "policy_version": self.policy.version,
                "problems": problems}  # fmt: skip
        return JSONResponse(body, status_code=200 if not problems else 503)

    async def metrics_page(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def app(self) -> Starlette:
        routes = [
            Route("/v1/rank", self._timed("rank", self.rank), methods=["POST"]),
            Route("/v1/rank/batch", self._timed("rank_batch", self.rank_batch), methods=["POST"]),
            Route("/v1/outcome", self._timed("outcome", self.outcome), methods=["POST"]),
            Route("/healthz", self._timed("healthz", self.healthz), methods=["GET"]),
            Route("/readyz", self._timed("readyz", self.readyz), methods=["GET"]),
            Route(self.cfg.serve.metrics_path, self.metrics_page, methods=["GET"]),
        ]
        return Starlette(routes=routes)


def build_service(cfg: RankrlConfig) -> DecisionService:
    """The service from configuration: the registry's champion (or the default weights) and both logs."""
    import torch

    torch.set_num_threads(1)  # one search is a tiny forward pass: threads only add overhead and contention
    policy = ServingPolicy(
        ModelRegistry(cfg.paths.registry_dir),
        default_weights=np.asarray(cfg.serve.default_weights, dtype=np.float64),
        exploration=DirichletExploration.from_config(cfg.exploration),
        auto_refresh=False,
    )
    decisions = open_log(cfg.serve.decisions, cfg)
    try:
        outcomes = open_log(cfg.serve.outcomes, cfg)
    except BaseException:
        decisions.close()
        raise
    return DecisionService(cfg, policy, decisions, outcomes)


def run_serve(cfg: RankrlConfig) -> int:
    """Serve until SIGTERM/SIGINT (uvicorn drains in-flight requests, then the logs are closed)."""
    import uvicorn

    service = build_service(cfg)
    service.start_reloader()
    s = cfg.serve
    log.info(
        "serve listening on http://%s:%d policy=%s decisions=%s outcomes=%s",
        s.host, s.port, service.policy.version, service.decisions.name, service.outcomes.name,
    )  # fmt: skip
    server = uvicorn.Server(
        uvicorn.Config(service.app(), host=s.host, port=s.port, log_level="warning", access_log=False, lifespan="off")
    )
    # uvicorn captures SIGTERM/SIGINT while serving, drains, then re-raises the signal to the handler it found:
    # one that only logs lets the service close its logs and exit 0 as the other daemons do.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: log.info("serve received %s: stopped", signal.Signals(signum).name))
    # Everything loaded so far (torch, the policy, the Kafka client) lives for the whole process: move it out of the
    # collector's reach, so that a full collection under load walks only what requests allocate (p99, bench/results).
    gc.collect()
    gc.freeze()
    # The event loop shares the GIL with kafka-python's sender thread: hand it over every 1 ms rather than 5 ms, so a
    # response ready to go does not wait out the other thread's turn.
    sys.setswitchinterval(0.001)
    try:
        server.run()  # on uvloop with httptools (uvicorn[standard]): ~2x less CPU a request than asyncio's loop
    finally:
        service.close()
        log.info("serve stopped")
    return 0
