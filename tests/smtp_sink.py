"""A real SMTP server for tests/email.rs: aiosmtpd on a loopback port.

Each message it accepts is written to OUT_DIR as NNNN.json: the envelope, the raw header
block, and the headers and text/HTML parts as Python's own email package decodes them (a
MIME parser independent of the one that built the message). Prints "ready" once it
accepts connections; runs until killed.

Run with Debian's interpreter, which has python3-aiosmtpd:
    /usr/bin/python3 -B tests/smtp_sink.py PORT OUT_DIR [--refuse N] [--auth USER:PASS]
"""

import argparse
import json
import os
import threading
from email import policy
from email.parser import BytesParser

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Sink:
    def __init__(self, out_dir, refuse):
        self.out_dir = out_dir
        self.refuse = refuse
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        if self.refuse > 0:
            # A passing refusal, as a busy or greylisting server gives.
            self.refuse -= 1
            return "451 4.3.0 try again later"
        self.count += 1
        content = envelope.original_content or envelope.content
        head = content.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        message = BytesParser(policy=policy.default).parsebytes(content)
        parts = {}
        for part in message.walk():
            kind = part.get_content_type()
            if kind in ("text/plain", "text/html") and not part.is_multipart():
                parts[kind] = part.get_content()
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "authenticated": bool(session.authenticated),
            "raw_headers": head,
            "headers": [[name, str(value)] for name, value in message.items()],
            "content_type": message.get_content_type(),
            "text": parts.get("text/plain"),
            "html": parts.get("text/html"),
        }
        path = os.path.join(self.out_dir, "%04d.json" % self.count)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f)
        # Whole files only: the test polls this directory.
        os.rename(path + ".tmp", path)
        return "250 2.0.0 OK"


def main():
    args = argparse.ArgumentParser()
    args.add_argument("port", type=int)
    args.add_argument("out_dir")
    args.add_argument("--refuse", type=int, default=0, help="refuse the first N messages")
    args.add_argument("--auth", help="USER:PASS; require this login")
    opts = args.parse_args()

    kwargs = {}
    if opts.auth:
        user, password = opts.auth.encode().split(b":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login == user
                and auth_data.password == password
            )
            return AuthResult(success=ok, handled=False)

        # Plain-text AUTH is fine on loopback; lettre sends it when told to.
        kwargs = dict(
            authenticator=authenticator, auth_required=True, auth_require_tls=False
        )

    controller = Controller(
        Sink(opts.out_dir, opts.refuse), hostname="127.0.0.1", port=opts.port, **kwargs
    )
    controller.start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
