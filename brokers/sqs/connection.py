"""SQS URLs and options, boto3 clients, kombu's queue names, and the one place botocore's
exceptions become taskframe's.

See the package docstring for the URL form and the options.
"""

from __future__ import annotations

import math
import string
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from taskframe.exceptions import BrokerConnectionError, BrokerError, ImproperlyConfigured

__all__ = [
    "DEFAULT_REGION",
    "MAX_VISIBILITY",
    "SQSSettings",
    "dead_letter_name",
    "error_code",
    "make_client",
    "parse_settings",
    "sqs_queue_name",
    "translate_errors",
]

DEFAULT_REGION = "us-east-1"
DEFAULT_VISIBILITY = 1800.0
DEFAULT_WAIT = 10
MAX_WAIT = 20
MAX_VISIBILITY = 43200
"""SQS keeps a received message invisible for at most 12 hours."""

_RENAME = {ord(char): "_" for char in string.punctuation if char not in "-_."}
_RENAME[ord(".")] = "-"
_DENIED = {
    "AccessDenied",
    "AccessDeniedException",
    "AuthFailure",
    "ExpiredToken",
    "IncompleteSignature",
    "InvalidClientTokenId",
    "InvalidSecurity",
    "MissingAuthenticationToken",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
}
_TRANSIENT = {
    "InternalError",
    "InternalFailure",
    "RequestThrottled",
    "ServiceUnavailable",
    "ThrottlingException",
}


def sqs_queue_name(name: str) -> str:
    """kombu's SQS name for ``name``: ``.`` becomes ``-``, other punctuation except ``-`` and
    ``_`` becomes ``_``, and a ``.fifo`` suffix is kept."""
    if name.endswith(".fifo"):
        return name[: -len(".fifo")].translate(_RENAME) + ".fifo"
    return name.translate(_RENAME)


def dead_letter_name(sqs_name: str) -> str:
    """The dead-letter queue of an SQS queue: a standard queue, so ``.fifo`` is spelled out."""
    if sqs_name.endswith(".fifo"):
        return sqs_name[: -len(".fifo")] + "-fifo-dlq"
    return sqs_name + "-dlq"


@dataclass(frozen=True)
class SQSSettings:
    """Everything a URL and its transport options say, the secret kept out of ``repr``."""

    display: str
    region: str
    endpoint_url: str | None
    queue_name_prefix: str
    visibility_timeout: float
    wait_time_seconds: int
    predefined_queues: dict[str, dict[str, str]]
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)

    @property
    def visibility_seconds(self) -> int:
        """SQS takes whole seconds: round up, so a message is never visible early."""
        return min(MAX_VISIBILITY, math.ceil(self.visibility_timeout))

    @property
    def where(self) -> str:
        return self.endpoint_url or f"AWS SQS in {self.region}"


def parse_settings(url: str, options: Mapping[str, Any]) -> SQSSettings:
    """Read ``sqs://[KEY:SECRET@][host[:port]][/?option=value...]`` plus ``options``; query
    values override transport options."""
    parts = urlsplit(url)
    settings: dict[str, Any] = {**options, **dict(parse_qsl(parts.query))}
    access_key = unquote(parts.username) if parts.username else None
    secret_key = unquote(parts.password) if parts.password else None
    endpoint = settings.get("endpoint_url") or None
    if parts.hostname:
        secure = str(settings.get("is_secure", False)).lower() in {"1", "true", "yes"}
        port = f":{parts.port}" if parts.port else ""
        from_url = f"{'https' if secure else 'http'}://{parts.hostname}{port}"
        if endpoint is not None and str(endpoint).rstrip("/") != from_url:
            raise ImproperlyConfigured(
                f"the SQS URL names the endpoint {from_url} but the transport option "
                f"endpoint_url is {endpoint!r}; give the endpoint in one place only"
            )
        endpoint = from_url
    user = f"{access_key}:***@" if access_key else ""
    host = parts.netloc.rsplit("@", 1)[-1]
    region = settings.get("region") or boto3.session.Session().region_name or DEFAULT_REGION
    visibility = _number(settings, "visibility_timeout", DEFAULT_VISIBILITY)
    if not 0 <= visibility <= MAX_VISIBILITY:
        raise ImproperlyConfigured(
            f"visibility_timeout={visibility} for SQS: use 0 to {MAX_VISIBILITY} seconds"
        )
    wait = int(_number(settings, "wait_time_seconds", DEFAULT_WAIT))
    predefined = settings.get("predefined_queues") or {}
    if not isinstance(predefined, dict) or not all(
        isinstance(entry, dict) and "url" in entry for entry in predefined.values()
    ):
        raise ImproperlyConfigured(
            "predefined_queues must map queue names to {'url': ..., optionally "
            "'access_key_id', 'secret_access_key', 'region'}"
        )
    return SQSSettings(
        display=f"sqs://{user}{host}",
        region=str(region),
        endpoint_url=str(endpoint).rstrip("/") if endpoint else None,
        queue_name_prefix=str(settings.get("queue_name_prefix", "")),
        visibility_timeout=visibility,
        wait_time_seconds=max(1, min(MAX_WAIT, wait)),
        predefined_queues=predefined,
        access_key=access_key,
        secret_key=secret_key,
    )


def _number(settings: Mapping[str, Any], key: str, default: float) -> float:
    value = settings.get(key)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(f"SQS option {key}={value!r} is not a number") from None


def make_client(settings: SQSSettings, entry: Mapping[str, str] | None = None) -> Any:
    """A boto3 SQS client; ``entry`` is a ``predefined_queues`` item with its own keys.

    Retries are limited to one, with botocore's backoff: the worker retries a
    ``BrokerConnectionError`` itself, so a second layer of retries would only add a storm."""
    entry = entry or {}
    session = boto3.session.Session(
        aws_access_key_id=entry.get("access_key_id", settings.access_key),
        aws_secret_access_key=entry.get("secret_access_key", settings.secret_key),
        region_name=entry.get("region", settings.region),
    )
    config = Config(
        retries={"total_max_attempts": 2, "mode": "standard"},
        connect_timeout=5,
        read_timeout=MAX_WAIT + 10,
    )
    return session.client("sqs", endpoint_url=settings.endpoint_url, config=config)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def translate_errors(settings: SQSSettings, action: str) -> Iterator[None]:
    """Turn botocore exceptions into BrokerConnectionError (unreachable, throttled, 5xx: the
    worker retries) or BrokerError (refused credentials, bad requests: retrying cannot help),
    each naming the endpoint and what was being done."""
    try:
        yield
    except ClientError as exc:
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code in _DENIED or status == 403:
            raise BrokerError(
                f"SQS at {settings.where} rejected the credentials of {settings.display} "
                f"({code}: {message}); check KEY:SECRET in the URL (URL-encode '/' as %2F) "
                "or the AWS credentials in the environment"
            ) from exc
        if code in _TRANSIENT or status >= 500:
            raise BrokerConnectionError(
                f"SQS at {settings.where} is unavailable for {action} ({code}: {message})"
            ) from exc
        raise BrokerError(f"SQS refused {action} ({code}: {message})") from exc
    except (BotoConnectionError, HTTPClientError) as exc:
        raise BrokerConnectionError(
            f"cannot reach SQS at {settings.where} for {action} ({exc}); check that the "
            f"endpoint is up and that the URL {settings.display} is right"
        ) from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise BrokerError(
            f"no AWS credentials for {settings.display}: put them in the URL "
            "(sqs://KEY:SECRET@) or in the environment (AWS_ACCESS_KEY_ID, ...)"
        ) from exc
    except BotoCoreError as exc:
        raise BrokerError(f"SQS error at {settings.where} during {action}: {exc}") from exc
