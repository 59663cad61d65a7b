"""A real SMTP server for the tests: aiosmtpd with STARTTLS, a test CA's certificate and AUTH."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from backup_pipeline.sample_data.cluster import free_port

USER, PASSWORD = "backup-mailer", "smtp-secret-Pa55"


@dataclass
class Recorder:
    """Keeps what the server accepted; `refuse` makes the next DATA commands fail."""

    refuse: int = 0
    refused: int = 0
    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):
        if self.refuse > 0:
            self.refuse -= 1
            self.refused += 1
            return "451 4.3.0 Temporary failure, try again later"
        parsed = message_from_bytes(envelope.original_content, policy=policy.default)
        self.messages.append((list(envelope.rcpt_tos), parsed))
        return "250 2.0.0 OK"


def _authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode()
          and auth_data.password == PASSWORD.encode())
    return AuthResult(success=ok)


@dataclass
class SmtpServer:
    controller: Controller
    recorder: Recorder
    port: int
    ca_file: Path

    def env(self, security: str = "starttls") -> dict[str, str]:
        return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(self.port), "SMTP_USER": USER,
                "SMTP_PASS": PASSWORD, "SMTP_FROM": "backups@hub.example.com",
                "SMTP_SECURITY": security, "SMTP_CA_FILE": str(self.ca_file)}

    def stop(self) -> None:
        self.controller.stop()


def start_smtp(folder: Path, implicit_tls: bool = False) -> SmtpServer:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = folder / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    recorder = Recorder()
    port = free_port()
    if implicit_tls:
        # The whole connection is TLS; aiosmtpd only counts STARTTLS as TLS for AUTH, hence
        # auth_require_tls=False here.
        controller = Controller(recorder, hostname="127.0.0.1", port=port, ssl_context=context,
                                auth_required=True, auth_require_tls=False,
                                authenticator=_authenticate, server_hostname="127.0.0.1")
    else:
        controller = Controller(recorder, hostname="127.0.0.1", port=port, tls_context=context,
                                require_starttls=True, auth_required=True,
                                auth_require_tls=True, authenticator=_authenticate)
    controller.start()
    return SmtpServer(controller, recorder, port, ca_file)
