"""The service's error hierarchy, and the one place where dependency errors are mapped into it.

    PropagatorError                      retriable = False
    ├── RequestRejected                  the sender's fault; answered with status + code
    │   ├── SignatureInvalid             401 invalid_signature
    │   ├── TimestampOutOfTolerance      401 timestamp_out_of_tolerance
    │   ├── MalformedPayload             400 malformed_payload
    │   ├── PayloadTooLarge              413 payload_too_large
    │   ├── UnknownSource                404 unknown_source
    │   ├── TokenInvalid                 400 invalid_token (or a more precise code: invalid_issuer,
    │   │                                    invalid_audience, token_expired, unknown_key, ...)
    │   ├── Unauthorized                 401 unauthorized (a shared Authorization value is wrong)
    │   └── RateLimited                  429 rate_limited (with Retry-After)
    ├── DependencyUnavailable            retriable = True: try again later
    │   ├── BrokerUnavailable            503 broker_unavailable (ingest adds Retry-After)
    │   │   └── ProducerStateLost        the producer's idempotence state is gone: replace it
    │   ├── KeysUnavailable              503 keys_unavailable: an issuer's JWKS cannot be fetched
    │   └── SinkUnavailable              a downstream failed this time (5xx, 429, timeout)
    │       └── SinkDown                 the downstream as a whole is unreachable: open the circuit
    ├── PublishFailed                    500 publish_failed: the broker refused the record
    ├── SinkRejected                     a downstream refused the change for good
    └── InvalidRecord                    a Kafka record that is not a valid event

``retriable`` decides between retrying and dead-lettering in the consumers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import redis.exceptions as redis_errors
from aiokafka import errors as kafka_errors


class PropagatorError(Exception):
    """Root of every error the service raises on purpose."""

    retriable: bool = False
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            # A more precise code than the class's, e.g. TokenInvalid(code="invalid_audience").
            self.code = code


class RequestRejected(PropagatorError):
    status = 400
    code = "bad_request"


class SignatureInvalid(RequestRejected):
    status = 401
    code = "invalid_signature"


class TimestampOutOfTolerance(RequestRejected):
    status = 401
    code = "timestamp_out_of_tolerance"


class MalformedPayload(RequestRejected):
    status = 400
    code = "malformed_payload"


class PayloadTooLarge(RequestRejected):
    status = 413
    code = "payload_too_large"


class UnknownSource(RequestRejected):
    status = 404
    code = "unknown_source"


class TokenInvalid(RequestRejected):
    status = 400
    code = "invalid_token"


class Unauthorized(RequestRejected):
    status = 401
    code = "unauthorized"


class RateLimited(RequestRejected):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DependencyUnavailable(PropagatorError):
    retriable = True
    status = 503
    code = "dependency_unavailable"


class BrokerUnavailable(DependencyUnavailable):
    code = "broker_unavailable"


class KeysUnavailable(DependencyUnavailable):
    code = "keys_unavailable"


class ProducerStateLost(BrokerUnavailable):
    code = "broker_unavailable"


class SinkUnavailable(DependencyUnavailable):
    code = "sink_unavailable"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.http_status = http_status
        self.retry_after_s = retry_after_s


class SinkDown(SinkUnavailable):
    code = "sink_down"


class PublishFailed(PropagatorError):
    status = 500
    code = "publish_failed"


class SinkRejected(PropagatorError):
    code = "sink_rejected"

    def __init__(
        self, message: str, *, code: str | None = None, http_status: int | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.http_status = http_status


class InvalidRecord(PropagatorError):
    code = "invalid_record"


# Redis answers these while it cannot serve for now (loading, failover, memory pressure).
_TRANSIENT_REDIS_REPLIES = (
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "OOM",
    "BUSY",
)


# The broker no longer matches the idempotent producer's sequence state (after a broker restart
# or a long outage): nothing was written, and only a new producer recovers.
PRODUCER_STATE_LOST = (
    kafka_errors.OutOfOrderSequenceNumber,
    kafka_errors.InvalidProducerEpoch,
    kafka_errors.ProducerFenced,
    kafka_errors.InvalidProducerIdMapping,
)


@contextmanager
def map_kafka_errors() -> Iterator[None]:
    """Translate aiokafka's errors (and timeouts) into the hierarchy."""
    try:
        yield
    except PropagatorError:
        raise
    except TimeoutError as exc:  # asyncio.timeout() and aiokafka's own timeouts
        raise BrokerUnavailable(f"the broker did not acknowledge in time: {exc}") from exc
    except PRODUCER_STATE_LOST as exc:
        raise ProducerStateLost(f"{type(exc).__name__}: {exc}") from exc
    except kafka_errors.KafkaError as exc:
        if exc.retriable or isinstance(
            exc,
            kafka_errors.KafkaConnectionError
            | kafka_errors.KafkaTimeoutError
            | kafka_errors.ProducerClosed,
        ):
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc
        raise PublishFailed(f"{type(exc).__name__}: {exc}") from exc


@contextmanager
def map_redis_errors() -> Iterator[None]:
    """Translate redis-py's errors into the hierarchy."""
    try:
        yield
    except PropagatorError:
        raise
    except (TimeoutError, redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
        raise SinkUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
    except redis_errors.ResponseError as exc:
        if str(exc).startswith(_TRANSIENT_REDIS_REPLIES):
            raise SinkUnavailable(f"redis: {exc}") from exc
        raise SinkRejected(f"redis: {exc}") from exc
    except redis_errors.RedisError as exc:
        raise SinkUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc


@contextmanager
def map_http_errors() -> Iterator[None]:
    """Translate aiohttp client errors of a sink's request into the hierarchy."""
    try:
        yield
    except PropagatorError:
        raise
    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
        raise SinkDown(f"http: {type(exc).__name__}: {exc}") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SinkUnavailable(f"http: {type(exc).__name__}: {exc}", code="http_timeout") from exc
