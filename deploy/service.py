"""`rankrl serve`: the decision service. A search engine in any language asks for weights and reports outcomes.

    POST /v1/rank         {state, ranking_metadata?, session_id?, log_id?}
                          -> {log_id, weights: {W_COLLAB_POS: …}, mean: {…}, log_propensity, policy_version}
    POST /v1/rank/batch   {requests: [rank request, …]} (at most 1,000) -> {results: [response, …]}
    POST /v1/outcome      {log_id, ranking, ranking_metadata?, outcomes, created_at?, outcome_id?}
                          -> 202 {log_id, status, outcome_id}
    GET  /healthz         200 while every part of the process works (503 when one died and needs a restart)
    GET  /readyz          200 when a policy is loaded and both logs take writes now (probed), else 503 with reasons
    GET  /metrics         Prometheus (rankrl_serve_…)

ACKNOWLEDGED MEANS STORED AS SERVED. A decision is answered only once its record is durable (serve.decisions), an
outcome only once its record is (serve.outcomes). Each record is validated first by the very function the join
applies (common/decisions.py: `parse_decision`, `parse_outcome`, with the same limits), so whatever serve answers
200/202 the join stores exactly as served, and whatever it would refuse is refused here, with a 400 naming the
field. The state logged is the one the policy saw, frozen (`freeze_state`). A record that cannot be made durable
fails the request with 503, and a `Retraction` naming it follows it into the log, so that a write that completes
after the answer is dropped by the join: refused means absent.

ONE LOG_ID, ONE DECISION. Ranking a log_id this instance already answered returns the same answer for the same
request (an idempotency key) or 409 for another; a log_id still being answered is 409. Across instances the join
keeps the first decision and dead-letters the others.

TIME. Decisions carry serve's clock. An outcome's `created_at`, when given, needs a zone and may be at most
`serve.max_clock_skew_s` ahead of this clock.

WHO MAY CALL (docs/security.md). With `serve.tokens_file`, every /v1 call needs `Authorization: Bearer TOKEN`
with the scope `rank` or `outcome`; POST bodies must be `application/json` (a browser cannot send that across
sites without a CORS preflight, which serve never grants). Outcomes are bounded by the plausibility limits.

BOUNDED RESOURCES. Bodies are read in chunks and refused past `serve.max_body_bytes` (413) or when not complete
within `serve.read_timeout_s` (408); request lines and headers are bounded by `serve.max_header_bytes`, connections
by `serve.max_connections`; a client that aborts is one log line.

The weights are the champion's mean served with its exploration (deploy/serving.py, docs/serving-contract.md);
with no champion yet (or a damaged one at start, said in /readyz), serve.default_weights with the configured
exploration. A reload thread swaps in a new champion between requests. Starlette on uvicorn, one event loop.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import ipaddress
import logging
import signal
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.config import ConfigError, RankrlConfig
from common.decisions import (
    Decision,
    ErrorBody,
    Limits,
    Outcome,
    OutcomeAccepted,
    RankBatch,
    RankRequest,
    RankResponse,
    Readiness,
    Retraction,
    check_size,
    decode,
    encode,
    freeze_state,
    iso_now,
    parse_decision,
    parse_outcome,
)
from common.exploration import DirichletExploration
from common.features import state_tuple
from common.schema import ACTION_KEYS, Action, InvalidEvent, _timestamp
from deploy.decision_log import FileLog, KafkaLog, LogUnavailable, RecordLog
from deploy.registry import ModelRegistry
from deploy.serving import ServingPolicy

log = logging.getLogger(__name__)

ENDPOINTS = ("rank", "rank_batch", "outcome", "healthz", "readyz", "metrics")
SCOPES = ("rank", "outcome")


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
        self.retractions = Counter(p + "retractions", "Retractions logged for records of refused requests",
                                   ["log"], registry=registry)  # fmt: skip
        self.invalid = Counter(p + "invalid_requests", "Requests refused as invalid, by reason", ["reason"],
                               registry=registry)  # fmt: skip
        self.refused = Counter(p + "refused_requests", "Requests refused before validation, by reason "
                               "(unauthenticated, forbidden, media_type, too_large, read_timeout, conflict, "
                               "in_progress)", ["reason"], registry=registry)  # fmt: skip
        self.replays = Counter(p + "idempotent_replays", "Rank requests answered again from the first answer of "
                               "their log_id", registry=registry)  # fmt: skip
        self.aborted = Counter(p + "client_aborts", "Requests whose client went away before the body was read",
                               registry=registry)  # fmt: skip
        self.policy = Gauge(p + "policy_info", "The policy version being served (1 for the current one)", ["version"],
                            registry=registry)  # fmt: skip
        self.fallback = Gauge(p + "policy_fallback", "1 while the champion cannot be loaded and an earlier champion "
                              "or the default weights are served (see /readyz)", registry=registry)  # fmt: skip
        self.reloads = Counter(p + "policy_reloads", "Champion changes picked up without a restart", registry=registry)
        for e in ENDPOINTS:
            self.duration.labels(endpoint=e)
        for name in ("decisions", "outcomes"):
            self.log_failures.labels(log=name)
            self.retractions.labels(log=name)
        for r in ("unauthenticated", "forbidden", "media_type", "too_large", "read_timeout", "conflict",
                  "in_progress"):  # fmt: skip
            self.refused.labels(reason=r)
        self._version: str | None = None

    def serving(self, version: str) -> None:
        if version != self._version:
            if self._version is not None:
                self.policy.remove(self._version)
            self.policy.labels(version=version).set(1)
            self._version = version


class Refused(Exception):
    """A request refused before it is read as a rank or an outcome: its status code and a bounded reason."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers


def load_tokens(path: str) -> dict[bytes, frozenset[str]]:
    """Bearer tokens from a file, `SCOPES TOKEN` a line (SCOPES: rank, outcome or rank,outcome; # comments), as
    sha256 digest -> scopes. Tokens are never logged; a malformed line is a configuration error naming its number."""
    out: dict[bytes, frozenset[str]] = {}
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"config serve.tokens_file: cannot read {path}: {e}") from None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        scopes = frozenset(parts[0].split(",")) if len(parts) == 2 else frozenset()
        if len(parts) != 2 or not scopes or not scopes <= set(SCOPES) or len(parts[1]) < 16:
            raise ConfigError(
                f"config serve.tokens_file: {path} line {n}: expected `SCOPES TOKEN` with SCOPES from {list(SCOPES)} "
                "(comma-separated) and a token of at least 16 characters"
            )
        out[hashlib.sha256(parts[1].encode()).digest()] = scopes
    if not out:
        raise ConfigError(f"config serve.tokens_file: {path} holds no token")
    return out


def open_log(url: str, cfg: RankrlConfig) -> RecordLog:
    """A decision or outcome log from its URL: file://PATH or kafka://HOST:PORT/TOPIC."""
    if url.startswith("file://"):
        return FileLog(url[len("file://") :], min_free_bytes=cfg.streamer.max_record_bytes)
    from streamer.daemon import kafka_settings

    settings = kafka_settings(cfg, url)
    return KafkaLog(settings.client_kwargs(), settings.topic, settings.bootstrap_timeout_ms,
                    cfg.streamer.max_record_bytes)  # fmt: skip


def _json(body: msgspec.Struct, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(encode(body), status_code=status, media_type="application/json", headers=headers)


class DecisionService:
    """The routes over a policy and two logs (built by `build_service`; tests build it with their own logs)."""

    def __init__(
        self,
        cfg: RankrlConfig,
        policy: ServingPolicy,
        decisions: RecordLog,
        outcomes: RecordLog,
        registry: CollectorRegistry | None = None,
        tokens: dict[bytes, frozenset[str]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.policy = policy
        self.decisions = decisions
        self.outcomes = outcomes
        self.tokens = tokens
        self.limits: Limits = cfg.limits()
        self.outcome_limits = msgspec.structs.replace(self.limits, max_future_s=cfg.serve.max_clock_skew_s)
        self.registry = registry or CollectorRegistry()
        self.metrics = ServeMetrics(self.registry)
        self.metrics.serving(str(policy.version))
        self.metrics.fallback.set(1 if policy.problem else 0)
        # idempotency: log_id -> (request digest, expiry, response bytes) of answered ranks; ids being answered
        self._answered: OrderedDict[str, tuple[bytes, float, bytes]] = OrderedDict()
        # a decision's window and lateness: an outcome dated before this much ago cannot count any more
        self._outcome_max_age_s = cfg.join.window_s + cfg.join.lateness_s
        # a log_id stays taken as long as the streamer would drop a second decision for it (its dedup window)
        self._answer_ttl_s = max(cfg.streamer.dedup_window_s, self._outcome_max_age_s)
        self._inflight: set[str] = set()
        self._stop = threading.Event()
        self._reloader: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ lifecycle
    def start_reloader(self) -> None:
        def run() -> None:
            while not self._stop.wait(self.cfg.serve.reload_interval_s):
                try:
                    if self.policy.refresh():
                        self.metrics.reloads.inc()
                except Exception as e:  # a damaged new version: keep serving the loaded one, say so
                    log.error("serve: cannot load the new champion (still serving %s): %s", self.policy.version, e)
                self.metrics.serving(str(self.policy.version))
                self.metrics.fallback.set(1 if self.policy.problem else 0)

        self._reloader = threading.Thread(target=run, name="serve-reload", daemon=True)
        self._reloader.start()

    def close(self) -> None:
        self._stop.set()
        if self._reloader is not None:
            self._reloader.join(timeout=5)
        self.decisions.close()
        self.outcomes.close()

    # ------------------------------------------------------------------------------------------ helpers
    def _authorize(self, request: Request, scope: str | None) -> None:
        if scope is None:
            return
        if request.method == "POST":
            media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media != "application/json":
                raise Refused(415, "media_type", f"Content-Type must be application/json, got {media or 'none'!r}")
        if self.tokens is None:
            return
        auth = request.headers.get("authorization", "")
        kind, _, token = auth.partition(" ")
        scopes = self.tokens.get(hashlib.sha256(token.strip().encode()).digest()) if kind.lower() == "bearer" else None
        if scopes is None:
            raise Refused(401, "unauthenticated", "a valid `Authorization: Bearer TOKEN` is required",
                          {"WWW-Authenticate": 'Bearer realm="rankrl"'})  # fmt: skip
        if scope not in scopes:
            raise Refused(403, "forbidden", f"this token has no {scope!r} scope")

    def _timed(
        self, endpoint: str, handler: Callable[[Request], Awaitable[Response]], scope: str | None = None
    ) -> Callable[..., Any]:
        async def run(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                self._authorize(request, scope)
                response = await handler(request)
            except InvalidEvent as e:
                self.metrics.invalid.labels(reason=e.reason).inc()
                response = _json(ErrorBody("invalid_request", str(e), e.reason, e.field, e.log_id), 400)
            except Refused as e:
                self.metrics.refused.labels(reason=e.reason).inc()
                response = _json(ErrorBody(e.reason, e.detail), e.status, e.headers)
            except LogUnavailable as e:
                log.error("serve %s: %s", endpoint, e)
                response = _json(ErrorBody("log_unavailable", str(e)), 503)
            except ClientDisconnect:
                self.metrics.aborted.inc()
                log.info("serve %s: the client went away before sending its whole request", endpoint)
                response = Response(status_code=499)
            self.metrics.requests.labels(endpoint=endpoint, code=str(response.status_code)).inc()
            self.metrics.duration.labels(endpoint=endpoint).observe(time.perf_counter() - t0)
            return response

        return run

    async def _body(self, request: Request) -> bytes:
        """The request body, read in chunks: refused past serve.max_body_bytes (413) before it is all in memory,
        and when the client does not send it within serve.read_timeout_s (408)."""
        limit = self.cfg.serve.max_body_bytes
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limit:
            raise Refused(413, "too_large", f"request body of {size} bytes (limit serve.max_body_bytes {limit})")
        chunks: list[bytes] = []
        got = 0

        async def read() -> None:
            nonlocal got
            async for chunk in request.stream():
                got += len(chunk)
                if got > limit:
                    raise Refused(413, "too_large", f"request body over {limit} bytes (serve.max_body_bytes)")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), self.cfg.serve.read_timeout_s)
        except TimeoutError:
            raise Refused(408, "read_timeout", f"the body did not arrive within {self.cfg.serve.read_timeout_s:g}s "
                          "(serve.read_timeout_s)") from None  # fmt: skip
        return b"".join(chunks)

    # ------------------------------------------------------------------------------------------ idempotency
    @staticmethod
    def _digest(r: RankRequest) -> bytes:
        return hashlib.blake2b(encode(r), digest_size=16).digest()

    def _replay(self, requests: list[RankRequest]) -> dict[int, bytes]:
        """Answers already given for these log_ids (index -> response); 409 for a log_id answered for another
        request, or being answered now; 400 for a log_id twice in one batch."""
        now = time.monotonic()
        while self._answered:
            first, (_, expiry, _) = next(iter(self._answered.items()))
            if expiry > now:
                break
            del self._answered[first]
        seen: dict[str, int] = {}
        out: dict[int, bytes] = {}
        for i, r in enumerate(requests):
            lid = r.log_id
            if lid is None:
                continue
            field = f"requests[{i}].log_id" if len(requests) > 1 else "log_id"
            if lid in seen:
                raise InvalidEvent("inconsistent", field, f"log_id also used by requests[{seen[lid]}]", lid)
            seen[lid] = i
            if lid in self._inflight:
                raise Refused(409, "in_progress", f"log_id {lid!r} is being answered by another request; retry")
            known = self._answered.get(lid)
            if known is not None:
                if known[0] != self._digest(r):
                    raise Refused(409, "conflict", f"log_id {lid!r} was already answered for another request (a "
                                  "log_id names one search)")  # fmt: skip
                out[i] = known[2]
        return out

    def _remember(self, log_id: str, r: RankRequest, response: bytes) -> None:
        if self.cfg.serve.idempotency_entries == 0:
            return
        self._answered[log_id] = (self._digest(r), time.monotonic() + self._answer_ttl_s, response)
        while len(self._answered) > self.cfg.serve.idempotency_entries:
            self._answered.popitem(last=False)

    # ------------------------------------------------------------------------------------------ decisions
    async def _decide(self, requests: list[RankRequest]) -> list[bytes]:
        """The encoded response of each request, each decision durable (or replayed) before it returns."""
        replayed = self._replay(requests)
        todo = [i for i in range(len(requests)) if i not in replayed]
        if not todo:
            self.metrics.replays.inc(len(replayed))
            return [replayed[i] for i in range(len(requests))]
        now_t = time.time()
        now = iso_now(now_t)
        frozen = [freeze_state(requests[i].state, requests[i].ranking_metadata) for i in todo]
        states = np.array([state_tuple(st, ()) for st in frozen], dtype=np.float32)
        if not np.isfinite(states).all():
            raise InvalidEvent("not_finite", "state", "a feature is not finite")
        means, weights, logp, version = self.policy.decide(states)
        records: list[tuple[bytes, bytes]] = []
        decided: list[tuple[int, str, bytes]] = []
        for k, i in enumerate(todo):
            r = requests[i]
            log_id = r.log_id or uuid.uuid4().hex
            ws = [float(x) for x in weights[k]]
            d = Decision(log_id, now, frozen[k], Action(*ws), float(logp[k]), version, r.ranking_metadata,
                         r.session_id)  # fmt: skip
            raw = encode(d)
            try:  # what the join will run on this very record
                parse_decision(raw, now_t, self.limits)
            except InvalidEvent as e:
                if len(requests) > 1:
                    e = InvalidEvent(e.reason, f"requests[{i}].{e.field}", e.detail, e.log_id)
                raise e from None
            records.append((log_id.encode(), raw))
            resp = RankResponse(log_id, dict(zip(ACTION_KEYS, ws, strict=True)), float(logp[k]), version,
                                dict(zip(ACTION_KEYS, (float(x) for x in means[k]), strict=True)))  # fmt: skip
            decided.append((i, log_id, encode(resp)))
        ids = [lid for _, lid, _ in decided]
        self._inflight.update(ids)
        try:
            await self.decisions.write(records, self.cfg.serve.log_timeout_s)
        except LogUnavailable:
            self.metrics.log_failures.labels(log="decisions").inc(len(records))
            self._retract("decisions", [Retraction(lid, iso_now(), log_propensity=float(lp), reason="log_unavailable")
                                        for (_, lid, _), lp in zip(decided, logp, strict=True)])  # fmt: skip
            raise
        finally:
            self._inflight.difference_update(ids)
        for i, lid, resp_bytes in decided:
            if requests[i].log_id is not None:  # only a caller's own id can be retried (a made-up one is new)
                self._remember(lid, requests[i], resp_bytes)
        self.metrics.decisions.inc(len(records))
        self.metrics.replays.inc(len(replayed))
        answers = dict(replayed)
        answers.update((i, b) for i, _, b in decided)
        return [answers[i] for i in range(len(requests))]

    def _retract(self, which: str, retractions: list[Retraction]) -> None:
        """Log retractions behind the records of a refused request, without waiting: a write that completes after
        the 503 is then dropped by the join."""
        lg = self.decisions if which == "decisions" else self.outcomes
        try:
            lg.submit([(rt.retract.encode(), encode(rt)) for rt in retractions])
            self.metrics.retractions.labels(log=which).inc(len(retractions))
        except Exception as e:  # the log is failing: what could not be written needs no retraction
            log.warning("serve: could not hand %d retraction(s) to the %s log: %s", len(retractions), which, e)

    # ------------------------------------------------------------------------------------------ routes
    async def rank(self, request: Request) -> Response:
        req: RankRequest = decode(await self._body(request), RankRequest)
        (resp,) = await self._decide([req])
        return Response(resp, media_type="application/json")

    async def rank_batch(self, request: Request) -> Response:
        batch: RankBatch = decode(await self._body(request), RankBatch)
        results = await self._decide(batch.requests)
        return Response(b'{"results":[' + b",".join(results) + b"]}", media_type="application/json")

    async def outcome(self, request: Request) -> Response:
        now = time.time()
        out: Outcome = parse_outcome(await self._body(request), now, self.outcome_limits)
        if out.created_at is not None and _timestamp(out.created_at) < now - self._outcome_max_age_s:
            raise InvalidEvent("out_of_range", "created_at", f"{out.created_at!r} is older than join.window_s + "
                               f"join.lateness_s ({self._outcome_max_age_s:g}s): no window it could count in is open",
                               out.log_id)  # fmt: skip
        out = msgspec.structs.replace(
            out, created_at=out.created_at if out.created_at is not None else iso_now(now),
            outcome_id=out.outcome_id or uuid.uuid4().hex,
        )  # fmt: skip
        raw = encode(out)
        check_size(raw, self.limits, out.log_id)
        try:
            await self.outcomes.write([(out.log_id.encode(), raw)], self.cfg.serve.log_timeout_s)
        except LogUnavailable:
            self.metrics.log_failures.labels(log="outcomes").inc()
            self._retract("outcomes", [Retraction(out.log_id, iso_now(), outcome_id=out.outcome_id,
                                                  reason="log_unavailable")])  # fmt: skip
            raise
        self.metrics.outcomes.inc()
        return _json(OutcomeAccepted(out.log_id, "accepted", out.outcome_id or ""), 202)

    async def healthz(self, request: Request) -> Response:
        dead = [f"{name} log writer" for name, lg in (("decisions", self.decisions), ("outcomes", self.outcomes))
                if not lg.alive()]  # fmt: skip
        if self._reloader is not None and not self._reloader.is_alive() and not self._stop.is_set():
            dead.append("champion reload thread")
        if dead:
            return JSONResponse({"status": "dead", "problems": [f"{d} died: restart this instance" for d in dead]},
                                status_code=503)  # fmt: skip
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        logs = (("decisions", self.decisions), ("outcomes", self.outcomes))
        problems = [f"{name} log {lg.name} cannot be written" for name, lg in logs if not lg.ready()]
        warnings = [self.policy.problem] if self.policy.problem else []
        status: Literal["ready", "degraded", "not_ready"] = (
            "not_ready" if problems else "degraded" if warnings else "ready"
        )
        return _json(Readiness(status, self.policy.version, problems, warnings), 200 if not problems else 503)

    async def metrics_page(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def app(self) -> Starlette:
        routes = [
            Route("/v1/rank", self._timed("rank", self.rank, "rank"), methods=["POST"]),
            Route("/v1/rank/batch", self._timed("rank_batch", self.rank_batch, "rank"), methods=["POST"]),
            Route("/v1/outcome", self._timed("outcome", self.outcome, "outcome"), methods=["POST"]),
            Route("/healthz", self._timed("healthz", self.healthz), methods=["GET"]),
            Route("/readyz", self._timed("readyz", self.readyz), methods=["GET"]),
            Route(self.cfg.serve.metrics_path, self.metrics_page, methods=["GET"]),
        ]
        return Starlette(routes=routes)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_service(cfg: RankrlConfig) -> DecisionService:
    """The service from configuration: the registry's champion (or the default weights) and both logs."""
    import torch

    s = cfg.serve
    tokens = load_tokens(s.tokens_file) if s.tokens_file else None
    if tokens is None and not _loopback(s.host):
        raise ConfigError(
            f"config serve.tokens_file: serve listens on {s.host}, beyond this machine, without authentication: "
            "set serve.tokens_file (docs/security.md)"
        )
    torch.set_num_threads(1)  # one search is a tiny forward pass: threads only add overhead and contention
    policy = ServingPolicy(
        ModelRegistry(cfg.paths.registry_dir),
        default_weights=np.asarray(s.default_weights, dtype=np.float64),
        exploration=DirichletExploration.from_config(cfg.exploration),
        auto_refresh=False,
    )
    decisions = open_log(s.decisions, cfg)
    try:
        outcomes = open_log(s.outcomes, cfg)
    except BaseException:
        decisions.close()
        raise
    return DecisionService(cfg, policy, decisions, outcomes, tokens=tokens)


def run_serve(cfg: RankrlConfig) -> int:
    """Serve until SIGTERM/SIGINT (uvicorn drains in-flight requests, then the logs are closed)."""
    import uvicorn

    service = build_service(cfg)
    service.start_reloader()
    s = cfg.serve
    log.info(
        "serve listening on http://%s:%d policy=%s decisions=%s outcomes=%s auth=%s",
        s.host, s.port, service.policy.version, service.decisions.name, service.outcomes.name,
        "tokens" if service.tokens else "none (loopback only)",
    )  # fmt: skip
    from deploy.http import bounded_protocol

    server = uvicorn.Server(
        uvicorn.Config(
            service.app(), host=s.host, port=s.port, log_level="warning", access_log=False, lifespan="off",
            http=bounded_protocol(s.max_header_bytes, s.read_timeout_s), limit_concurrency=s.max_connections,
            timeout_keep_alive=int(max(1, s.keepalive_timeout_s)),
        )
    )  # fmt: skip
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
