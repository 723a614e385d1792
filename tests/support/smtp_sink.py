"""An SMTP server for pollhook's tests: aiosmtpd on 127.0.0.1.

    python3 smtp_sink.py DIR [PORT]

Listens on PORT (0: a free one) and prints the port on the first line of
stdout once it accepts connections. Each message accepted is written to
DIR as one JSON file, whole or not at all: the envelope (`from`, `to`,
`login`) and the message as a mail client reads it (`subject`,
`message_id`, `content_type`, `body`, decoded). While a file named
`refuse` exists in DIR, every message is refused with a 550 and its
`Message-ID` is added to `DIR/refused.log`. With POLLHOOK_SMTP_LOGIN=user:password in the environment, a
login is required (over plain text: only for tests on the loopback).
With POLLHOOK_SMTP_TLS=CERT:KEY (PEM files), STARTTLS is offered and
required; with POLLHOOK_SMTP_TLS_MODE=implicit as well, the connection is
TLS from the start (smtps). Each record says whether it came over TLS.
"""

import asyncio
import email
import email.policy
import itertools
import json
import os
import ssl
import sys
import time

from aiosmtpd.smtp import SMTP, AuthResult

directory = sys.argv[1]
port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
login = os.environ.get("POLLHOOK_SMTP_LOGIN")
tls = None
if os.environ.get("POLLHOOK_SMTP_TLS"):
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(*os.environ["POLLHOOK_SMTP_TLS"].split(":"))
implicit = os.environ.get("POLLHOOK_SMTP_TLS_MODE") == "implicit"
counter = itertools.count()


def authenticate(server, session, envelope, mechanism, auth_data):
    given = f"{auth_data.login.decode()}:{auth_data.password.decode()}"
    return AuthResult(success=given == login, auth_data=auth_data)


class Sink:
    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        if os.path.exists(os.path.join(directory, "refuse")):
            with open(os.path.join(directory, "refused.log"), "a") as log:
                log.write(f"{message['message-id']}\n")
            return "550 5.7.1 refused for the test"
        record = {
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "login": session.auth_data.login.decode() if session.auth_data else None,
            "subject": str(message["subject"]),
            "message_id": str(message["message-id"]),
            "from_header": str(message["from"]),
            "content_type": message.get_content_type(),
            "body": message.get_content().replace("\r\n", "\n"),
            "tls": server.transport.get_extra_info("ssl_object") is not None,
        }
        # Sorted by arrival, across restarts of the sink.
        name = f"{time.time_ns():020}-{next(counter):06}.json"
        partial = os.path.join(directory, name + ".partial")
        with open(partial, "w") as file:
            json.dump(record, file)
        os.rename(partial, os.path.join(directory, name))
        return "250 2.0.0 stored"


def protocol():
    options = {}
    if login:
        options.update(authenticator=authenticate, auth_required=True, auth_require_tls=False)
    if tls and not implicit:
        options.update(tls_context=tls, require_starttls=True)
    return SMTP(Sink(), **options)


async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        protocol, "127.0.0.1", port, ssl=tls if implicit else None
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
