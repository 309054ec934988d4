"""The one Kafka connection adapter: client options for kafka-python, aiokafka and Faust.

Every client of the project is built from :class:`core.settings.KafkaSettings` through these
functions, so a security setting added here reaches all of them.

>>> from core.settings import KafkaSettings
>>> kafka_python_options(KafkaSettings(bootstrap_servers="127.0.0.1:1,127.0.0.1:2"))
{'bootstrap_servers': ['127.0.0.1:1', '127.0.0.1:2'], 'security_protocol': 'PLAINTEXT'}
>>> faust_brokers(KafkaSettings(bootstrap_servers="127.0.0.1:1,127.0.0.1:2"))
['kafka://127.0.0.1:1', 'kafka://127.0.0.1:2']

Over TLS (``tests/reliability/test_kafka_tls.py`` runs every client against a broker's SSL
listener): kafka-python gets the CA file, aiokafka and Faust one verifying context.

>>> tls = KafkaSettings(bootstrap_servers="127.0.0.1:1", security_protocol="SSL", ssl_cafile="/ca.crt")
>>> kafka_python_options(tls)
{'bootstrap_servers': ['127.0.0.1:1'], 'security_protocol': 'SSL', 'ssl_cafile': '/ca.crt'}
>>> context = ssl_context(KafkaSettings(security_protocol="SSL"))  # no CA file: the system's CAs
>>> context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname and faust_credentials(KafkaSettings(security_protocol="SSL")) is not None
True
"""

from __future__ import annotations

import ssl
from typing import Any

from core.settings import KafkaSettings


def _password(kafka: KafkaSettings) -> str | None:
    return kafka.sasl_password.get_secret_value() if kafka.sasl_password else None


def kafka_python_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for kafka-python clients (producer, consumer, admin)."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers.split(","),
        "security_protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = _password(kafka)
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(kafka, key)
        if value is not None:
            options[key] = str(value)
    return options


def consumer_options(kafka: KafkaSettings) -> dict[str, Any]:
    """What a consumer adds to the connection options (kafka-python and aiokafka name it alike)."""
    return {"fetch_max_wait_ms": kafka.fetch_max_wait_ms}


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL listeners for aiokafka and Faust (None for plaintext)."""
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
    if kafka.ssl_certfile:
        context.load_cert_chain(str(kafka.ssl_certfile), str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None)
    return context


def aiokafka_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for aiokafka clients (the trainer's consumer)."""
    return {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol,
        "sasl_mechanism": kafka.sasl_mechanism or "PLAIN",
        "sasl_plain_username": kafka.sasl_username,
        "sasl_plain_password": _password(kafka),
        "ssl_context": ssl_context(kafka),
    }


def faust_brokers(kafka: KafkaSettings) -> list[str]:
    return [f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")]


def faust_credentials(kafka: KafkaSettings):
    """Faust's ``broker_credentials``: SASL over the same TLS context, or the context alone."""
    context = ssl_context(kafka)
    if kafka.sasl_mechanism:
        import faust

        return faust.SASLCredentials(
            username=kafka.sasl_username, password=_password(kafka) or "", ssl_context=context,
            mechanism=kafka.sasl_mechanism,
        )
    return context
