"""E-mail channel against a real SMTP server (aiosmtpd, via the shipped sandbox)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from pydantic import SecretStr

from bot.channels.email import EmailChannel
from bot.config import EmailChannelSettings
from bot.domain.errors import PermanentError, TransientError
from bot.domain.models import ChannelName, DeliveryState
from bot.ports import Channel, OutboundMessage
from tocsin_sandbox.smtp import ReceivedMail, SandboxSmtp

FROM = "Cellule de crise <cellule-crise@example.org>"
TO = "a.martin@example.org"


def outbound(**changes: Any) -> OutboundMessage:
    bodies = changes.pop("bodies", None) or {
        "subject": "Panne Orbis : procédures dégradées",
        "text": "Orbis est indisponible.\nUtilisez les procédures papier.",
        "html": "<p>Orbis est indisponible.</p><p>Utilisez les procédures papier.</p>",
    }
    fields: dict[str, Any] = {
        "delivery_id": 42,
        "channel": ChannelName.EMAIL,
        "address": TO,
        "recipient": "Dr A. Martin",
        "locale": "fr",
        "bodies": bodies,
        "require_ack": False,
        "ack_token": "tok",
        "idempotency_key": "delivery-42",
    }
    fields.update(changes)
    return OutboundMessage(**fields)


def settings_for(sandbox: SandboxSmtp, **changes: Any) -> EmailChannelSettings:
    return EmailChannelSettings.model_validate(
        {"host": sandbox.host, "port": sandbox.port, "from": FROM, "timeout": 5.0, **changes}
    )


def part(mail: ReceivedMail, subtype: str) -> str:
    """The decoded text of one alternative, as a mail client shows it (line ends normalised)."""
    body = mail.message.get_body((subtype,))
    assert body is not None, f"no text/{subtype} part"
    return str(body.get_content()).replace("\r\n", "\n")


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxSmtp]:
    async with SandboxSmtp() as server:
        yield server


@pytest.fixture
async def make_channel() -> AsyncIterator[Callable[..., EmailChannel]]:
    """Build channels that are closed at the end of the test, whatever happens."""
    made: list[EmailChannel] = []

    def make(settings: EmailChannelSettings, **options: Any) -> EmailChannel:
        made.append(EmailChannel(settings, **options))
        return made[-1]

    yield make
    for channel in made:
        await channel.close()


@pytest.fixture
async def channel(sandbox: SandboxSmtp, make_channel: Callable[..., EmailChannel]) -> EmailChannel:
    return make_channel(settings_for(sandbox))


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def test_is_a_channel(channel: EmailChannel, sandbox: SandboxSmtp) -> None:
    assert isinstance(channel, Channel)
    assert channel.name == ChannelName.EMAIL
    assert channel.provider_key(TO) == f"smtp:127.0.0.1:{sandbox.port}"


async def test_sends_text_and_html_alternatives(
    channel: EmailChannel, sandbox: SandboxSmtp
) -> None:
    receipt = await channel.send(outbound())

    [mail] = await sandbox.wait_for(1)
    assert receipt.state == DeliveryState.SENT
    assert mail.mail_from == "cellule-crise@example.org"
    assert mail.rcpt_tos == (TO,)
    message = mail.message
    assert message.get_content_type() == "multipart/alternative"
    assert message["From"] == FROM
    assert message["To"] == TO
    assert part(mail, "plain") == "Orbis est indisponible.\nUtilisez les procédures papier.\n"
    assert "<p>Orbis est indisponible.</p><p>Utilisez les procédures papier.</p>" in part(
        mail, "html"
    )


async def test_text_only_statement_is_a_single_part(
    channel: EmailChannel, sandbox: SandboxSmtp
) -> None:
    await channel.send(outbound(bodies={"subject": "Panne", "text": "Orbis est indisponible."}))

    [mail] = await sandbox.wait_for(1)
    assert mail.message.get_content_type() == "text/plain"
    assert part(mail, "plain") == "Orbis est indisponible.\n"


async def test_accented_subject_is_encoded_on_the_wire(
    channel: EmailChannel, sandbox: SandboxSmtp
) -> None:
    await channel.send(outbound())

    [mail] = await sandbox.wait_for(1)
    subject_line = next(
        line for line in mail.raw.split(b"\r\n") if line.lower().startswith(b"subject:")
    )
    assert b"=?utf-8?" in subject_line.lower()
    assert mail.raw.isascii()
    assert mail.message["Subject"] == "Panne Orbis : procédures dégradées"


async def test_message_id_is_the_provider_id_and_delivery_is_tagged(
    channel: EmailChannel, sandbox: SandboxSmtp
) -> None:
    first = await channel.send(outbound())
    again = await channel.send(outbound())
    other = await channel.send(outbound(delivery_id=43, idempotency_key=""))

    mails = await sandbox.wait_for(3)
    assert [m.message["Message-ID"] for m in mails] == [
        first.provider_id,
        again.provider_id,
        other.provider_id,
    ]
    assert first.provider_id is not None
    assert first.provider_id.endswith("@example.org>")
    # A resend of one delivery keeps its Message-ID, so mail clients show one message.
    assert again.provider_id == first.provider_id
    assert other.provider_id != first.provider_id
    assert [m.message["X-Tocsin-Delivery"] for m in mails] == ["42", "42", "43"]
    assert mails[0].message["Auto-Submitted"] == "auto-generated"


@pytest.mark.parametrize(
    ("locale", "prompt"),
    [
        ("fr", "Merci de confirmer la lecture :"),
        ("en", "Please confirm you have read this:"),
    ],
)
async def test_ack_link_in_both_parts(
    channel: EmailChannel, sandbox: SandboxSmtp, locale: str, prompt: str
) -> None:
    url = "https://tocsin.example.org/ack/abc?x=1&y=2"
    await channel.send(outbound(locale=locale, ack_url=url, require_ack=True))

    [mail] = await sandbox.wait_for(1)
    assert part(mail, "plain").endswith(f"\n\n{prompt} {url}\n")
    assert (
        f'{prompt} <a href="https://tocsin.example.org/ack/abc?x=1&amp;y=2">'
        "https://tocsin.example.org/ack/abc?x=1&amp;y=2</a>"
    ) in part(mail, "html")


async def test_no_ack_link_without_ack_url(channel: EmailChannel, sandbox: SandboxSmtp) -> None:
    await channel.send(outbound())

    [mail] = await sandbox.wait_for(1)
    assert "confirmer" not in part(mail, "plain")
    assert "<a " not in part(mail, "html")


async def test_html_part_has_the_escaped_title(channel: EmailChannel, sandbox: SandboxSmtp) -> None:
    bodies = {
        "subject": "Panne <Orbis> & SAMU",
        "html": "<p>Panne &lt;Orbis&gt; &amp; SAMU</p>",
        "text": "Panne <Orbis> & SAMU",
    }
    await channel.send(outbound(bodies=bodies))

    [mail] = await sandbox.wait_for(1)
    html = part(mail, "html")
    text = part(mail, "plain")
    assert "<title>Panne &lt;Orbis&gt; &amp; SAMU</title>" in html
    # Already escaped by the template's autoescape: not escaped twice.
    assert "<p>Panne &lt;Orbis&gt; &amp; SAMU</p>" in html
    assert text == "Panne <Orbis> & SAMU\n"
    assert mail.message["Subject"] == "Panne <Orbis> & SAMU"


async def test_one_connection_is_reused_for_a_batch(
    channel: EmailChannel, sandbox: SandboxSmtp
) -> None:
    for n in range(20):
        await channel.send(outbound(delivery_id=n, idempotency_key=f"d{n}"))

    mails = await sandbox.wait_for(20)
    assert len(mails) == 20
    assert sandbox.connections == 1
    assert {m.connection for m in mails} == {1}


@pytest.mark.parametrize("connections", [1, 3])
async def test_concurrent_sends_share_a_bounded_pool(
    sandbox: SandboxSmtp, make_channel: Callable[..., EmailChannel], connections: int
) -> None:
    channel = make_channel(settings_for(sandbox), connections=connections)

    receipts = await asyncio.gather(
        *(channel.send(outbound(delivery_id=n, idempotency_key=f"d{n}")) for n in range(30))
    )

    mails = await sandbox.wait_for(30)
    assert len({r.provider_id for r in receipts}) == 30
    assert len(mails) == 30
    assert sandbox.connections == connections


async def test_starttls_with_a_private_ca(
    server_tls: ssl.SSLContext, ca_file: str, make_channel: Callable[..., EmailChannel]
) -> None:
    async with SandboxSmtp(tls_context=server_tls, require_starttls=True) as sandbox:
        channel = make_channel(settings_for(sandbox, starttls=True), ca_file=ca_file)
        await channel.send(outbound())
        await channel.send(outbound(delivery_id=43))

        mails = await sandbox.wait_for(2)
    assert [m.tls for m in mails] == [True, True]
    assert sandbox.connections == 1


async def test_starttls_with_an_untrusted_certificate_fails_at_once(
    server_tls: ssl.SSLContext, make_channel: Callable[..., EmailChannel]
) -> None:
    async with SandboxSmtp(tls_context=server_tls, require_starttls=True) as sandbox:
        channel = make_channel(settings_for(sandbox, starttls=True))  # system CAs only
        with pytest.raises(PermanentError, match="certificate"):
            await channel.send(outbound())
    assert sandbox.messages == []


async def test_auth_over_starttls(
    server_tls: ssl.SSLContext, ca_file: str, make_channel: Callable[..., EmailChannel]
) -> None:
    async with SandboxSmtp(
        tls_context=server_tls, require_starttls=True, credentials={"tocsin": "s3cret"}
    ) as sandbox:
        channel = make_channel(
            settings_for(sandbox, starttls=True),
            username=SecretStr("tocsin"),
            password=SecretStr("s3cret"),
            ca_file=ca_file,
        )
        await channel.send(outbound())

        [mail] = await sandbox.wait_for(1)
    assert mail.authenticated
    assert mail.tls
    assert "s3cret" not in repr(channel)


async def test_auth_refused_is_permanent_and_does_not_hang(
    make_channel: Callable[..., EmailChannel],
) -> None:
    async with SandboxSmtp(credentials={"tocsin": "s3cret"}) as sandbox:
        channel = make_channel(
            settings_for(sandbox), username=SecretStr("tocsin"), password=SecretStr("wrong")
        )
        async with asyncio.timeout(3):
            with pytest.raises(PermanentError) as caught:
                await channel.send(outbound())
    assert caught.value.code == "535"
    assert "authentication refused" in caught.value.reason
    assert sandbox.messages == []


async def test_refused_recipient_is_permanent_with_the_server_reply(
    channel: EmailChannel, sandbox: SandboxSmtp
) -> None:
    sandbox.refuse("inconnu@example.org")

    with pytest.raises(PermanentError) as caught:
        await channel.send(outbound(address="inconnu@example.org"))
    await channel.send(outbound(delivery_id=43))

    assert caught.value.code == "550"
    assert caught.value.reason.startswith("recipient refused: 550 5.1.1 Mailbox unavailable")
    # The reason is stored and shown: the address in the server's reply is masked.
    assert "inconnu@example.org" not in caught.value.reason
    assert "i•••@example.org" in caught.value.reason
    # A refusal leaves the connection usable.
    [mail] = await sandbox.wait_for(1)
    assert mail.rcpt_tos == (TO,)
    assert sandbox.connections == 1


async def test_temporary_refusal_is_transient(channel: EmailChannel, sandbox: SandboxSmtp) -> None:
    sandbox.refuse(TO, "451 4.7.1 Greylisted, try again later")

    with pytest.raises(TransientError) as caught:
        await channel.send(outbound())

    assert caught.value.code == "451"
    assert caught.value.scope == "destination"
    assert "Greylisted" in caught.value.reason


async def test_server_down_is_transient(make_channel: Callable[..., EmailChannel]) -> None:
    async with SandboxSmtp() as sandbox:
        settings = settings_for(sandbox)
    channel = make_channel(settings)  # the port is free again: nothing listens

    with pytest.raises(TransientError, match="cannot reach the SMTP server"):
        await channel.send(outbound())


async def test_relay_closing_an_idle_connection_costs_no_attempt(
    channel: EmailChannel, sandbox: SandboxSmtp
) -> None:
    await channel.send(outbound())
    await sandbox.drop_connections()

    await channel.send(outbound(delivery_id=43))

    mails = await sandbox.wait_for(2)
    assert [m.connection for m in mails] == [1, 2]


async def test_a_connection_idle_too_long_is_reopened(
    channel: EmailChannel, sandbox: SandboxSmtp
) -> None:
    channel.max_idle = 0.0  # every parked connection counts as stale

    await channel.send(outbound())
    await channel.send(outbound(delivery_id=43))

    mails = await sandbox.wait_for(2)
    assert [m.connection for m in mails] == [1, 2]


async def test_server_gone_between_sends_is_transient(
    make_channel: Callable[..., EmailChannel],
) -> None:
    sandbox = SandboxSmtp()
    await sandbox.start()
    channel = make_channel(settings_for(sandbox))
    await channel.send(outbound())
    await sandbox.stop()

    with pytest.raises(TransientError):
        await channel.send(outbound(delivery_id=43))


async def test_statement_without_text_is_permanent(channel: EmailChannel) -> None:
    with pytest.raises(PermanentError, match="no text rendering"):
        await channel.send(outbound(bodies={"subject": "x", "html": "<p>x</p>"}))


def test_starttls_and_implicit_tls_are_exclusive() -> None:
    with pytest.raises(ValueError, match="mutually exclusive"):
        EmailChannel(EmailChannelSettings(starttls=True, use_tls=True))


async def test_close_says_quit_and_a_later_send_reconnects(
    channel: EmailChannel, sandbox: SandboxSmtp
) -> None:
    await channel.send(outbound())
    await channel.close()

    await channel.send(outbound(delivery_id=43))

    mails = await sandbox.wait_for(2)
    assert [m.connection for m in mails] == [1, 2]
