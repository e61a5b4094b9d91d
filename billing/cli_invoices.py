"""`billing invoices tail`: the invoice requests on billing.invoice-requests.v1, decoded
with the service's codec, one JSON object per line.

It reads with the service's Kafka client settings (billing/kafka.py, so a SASL_SSL
cluster works as it does for the service) in a consumer group of its own, new on every
start and never committed: it changes no offset anyone else reads. Without
--from-beginning it shows only requests published after it joined. --max and --timeout
end it (else Ctrl-C); with --max, fewer requests than asked by the timeout is exit 1.
"""
from __future__ import annotations

import argparse
import sys
import time
import uuid

from billing.cli_common import CommandError, print_json
from billing.config import Settings


def _consumer(settings: Settings, from_beginning: bool):
    from confluent_kafka import Consumer

    from billing.kafka import consumer_config

    config = consumer_config(settings, f"billing-cli-tail-{uuid.uuid4()}",
                             **{"auto.offset.reset": "earliest" if from_beginning else "latest"})
    consumer = Consumer(config)
    consumer.subscribe([settings.topics.invoice_requests])
    return consumer


def tail(settings: Settings, args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaError

    from billing import codec
    from billing.registry import install_reader

    install_reader(settings)  # a topic in the registry's wire format decodes too

    if args.max is not None and args.max < 1:
        raise CommandError(f"--max must be at least 1, got {args.max}")
    if args.timeout is not None and args.timeout <= 0:
        raise CommandError(f"--timeout must be more than 0 seconds, got {args.timeout:g}")
    consumer = _consumer(settings, args.from_beginning)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    shown = 0
    try:
        while args.max is None or shown < args.max:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0:
                break
            msg = consumer.poll(wait)
            if msg is None:
                continue
            if msg.error():
                if msg.error().fatal():
                    raise CommandError(f"Kafka: {msg.error().str()}")
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    print(f"billing invoices tail: {msg.error().str()}", file=sys.stderr)
                continue
            try:
                request = codec.decode(codec.Schema.INVOICE_REQUEST, msg.value())
            except codec.CodecError as exc:
                print(f"billing invoices tail: skipped partition {msg.partition()} offset {msg.offset()}: {exc}",
                      file=sys.stderr)
                continue
            if args.subscription and request.get("subscription_id") != args.subscription:
                continue
            print_json(request)
            shown += 1
    finally:
        consumer.close()
    if args.max is not None and shown < args.max:
        print(f"billing invoices tail: {shown} of {args.max} invoice requests within {args.timeout:g} s",
              file=sys.stderr)
        return 1
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser, run) -> None:
    """`run(args)` is the command (billing/cli.py: settings read, Kafka reach checked)."""
    invoices = sub.add_parser("invoices", parents=[common], help="read invoice requests from Kafka")
    verbs = invoices.add_subparsers(dest="invoices_command", required=True)
    p = verbs.add_parser("tail", parents=[common], help="decoded invoice requests as JSON lines")
    p.add_argument("--subscription", metavar="ID", help="only this subscription's requests")
    p.add_argument("--from-beginning", action="store_true", help="from the oldest request kept in the topic")
    p.add_argument("--max", type=int, help="stop after this many requests (exit 1 if --timeout comes first)")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    p.set_defaults(func=run)
