"""A channel is one module: a channel declared here, in the test, and registered in the
channel registry goes the whole way (configuration, audiences, masking, rendering, the
worker's send) without a line changed anywhere else."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from bot.app import build_dispatcher, open_runtime
from bot.channels import registry
from bot.channels.registry import build_channels, registered, spec_for, specs
from bot.channels.spec import ChannelSpec, RateLimits
from bot.config import ConfigError, settings_from_dict
from bot.config_base import Strict
from bot.domain.audiences import statement_kind_for
from bot.domain.clock import FakeClock
from bot.domain.declarations import IncidentDraft
from bot.domain.masking import mask_address
from bot.domain.models import Actor, ChannelName, DeliveryState, Role, StatementKind
from bot.domain.rendering import KIND_FORMATS, packaged_templates
from bot.ports import OutboundMessage, Receipt
from bot.store.memory import MemoryStore

if TYPE_CHECKING:
    import aiohttp

    from bot.config import Settings

TOY = ChannelName("toy")


class ToySettings(Strict):
    """``channels.toy``."""

    greeting: str = "hello"
    limits: RateLimits = RateLimits()


class ToyChannel:
    """The toy's adapter: keeps what it is asked to send. It names no ``keys``, like an adapter
    written before they existed: it is handed every credential."""

    name = TOY
    rate = 5.0
    burst = 5
    destination_rate: float | None = 1.0
    destination_burst = 1

    def __init__(self, settings: ToySettings) -> None:
        self.greeting = settings.greeting
        self.sent: list[OutboundMessage] = []

    async def send(self, message: OutboundMessage) -> Receipt:
        self.sent.append(message)
        return Receipt(f"toy-{message.delivery_id}", DeliveryState.DELIVERED, "ok")

    async def close(self) -> None:
        pass

    def provider_key(self, address: str) -> str:
        return "toy"


def toy_from_settings(settings: Settings, session: aiohttp.ClientSession) -> ToyChannel:
    section = settings.channels.section(TOY)
    assert isinstance(section, ToySettings)
    return ToyChannel(section)


def toy_handle(value: Any) -> Any:
    if isinstance(value, str) and not value.startswith("@"):
        raise ValueError("a toy handle starts with @")
    return value


TOY_SPEC = ChannelSpec(
    name=TOY,
    settings_model=ToySettings,
    from_settings=toy_from_settings,
    formats=("toy",),
    destination_key="toy_room",
    member_key="toy_handle",
    mask=lambda address: address[:2] + "•••",
    member_address=toy_handle,
)

CONFIG: dict[str, Any] = {
    "organisation": {"name": "AP-HP", "locale": "fr"},
    "channels": {"toy": {"greeting": "bonjour", "limits": {"rate": 2}}},
    "audiences": {
        "crisis-cell": {
            "statement": "internal",
            "destinations": [{"toy_room": "salle-de-crise", "name": "Salle de crise"}],
            "members": [{"name": "Ada", "toy_handle": "@ada"}],
            "policy": {"channels": ["toy"]},
        }
    },
    "default_audiences": ["crisis-cell"],
}


@pytest.fixture
def toy() -> Iterator[ChannelSpec[ToySettings]]:
    with registered(TOY_SPEC) as spec:
        yield spec


def test_the_configuration_reads_the_channel_its_destinations_and_its_members(
    toy: ChannelSpec[ToySettings],
) -> None:
    settings = settings_from_dict(CONFIG)
    assert settings.channels.get(toy) == ToySettings(greeting="bonjour", limits=RateLimits(rate=2))
    assert TOY in settings.channels.configured()
    audience = settings.audiences["crisis-cell"]
    [room] = audience.destinations
    assert (room.channel, room.address, room.name) == (TOY, "salle-de-crise", "Salle de crise")
    [ada] = audience.members
    assert ada.contacts() == {"toy": "@ada"}

    def refused(**changes: Any) -> str:
        data = {**CONFIG, **changes}
        with pytest.raises(ConfigError) as caught:
            settings_from_dict(data, source="tocsin.yaml")
        return str(caught.value)

    # The channel's own rules, at their key path.
    assert "channels.toy.greeting: Input should be a valid string" in refused(
        channels={"toy": {"greeting": 3}}
    )
    bad_member = {
        "statement": "internal",
        "members": [{"name": "Ada", "toy_handle": "ada"}],
        "policy": {"channels": ["toy"]},
    }
    assert "audiences.crisis-cell.members.0.toy_handle: a toy handle starts with @" in refused(
        audiences={"crisis-cell": bad_member}
    )
    # Used but not configured under channels.
    assert "channel(s) toy not configured under channels" in refused(channels={})


def test_without_its_registration_the_channel_is_unknown() -> None:
    assert spec_for(TOY) is None
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(CONFIG, source="tocsin.yaml")
    message = str(caught.value)
    assert "tocsin.yaml: channels.toy: Extra inputs are not permitted" in message
    assert "destinations.0.toy_room: Extra inputs are not permitted" in message
    assert "members.0.toy_handle: Extra inputs are not permitted" in message
    assert "toy" not in KIND_FORMATS[StatementKind.INTERNAL]


def test_masking_and_rendering_follow_the_declaration(toy: ChannelSpec[ToySettings]) -> None:
    assert mask_address(TOY, "@ada", personal=True) == "@a•••"
    assert mask_address(TOY, "salle-de-crise", personal=False) == "salle-de-crise"
    assert statement_kind_for(TOY, StatementKind.PUBLIC) is StatementKind.PUBLIC
    assert statement_kind_for(ChannelName.SMS, StatementKind.PUBLIC) is StatementKind.SMS
    for kind in StatementKind:
        assert ("toy" in KIND_FORMATS[kind]) is (kind is not StatementKind.SMS)
    assert list(specs())[-1] is toy


async def test_a_declaration_reaches_the_channel_through_the_worker(
    toy: ChannelSpec[ToySettings], tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(packaged_templates(), templates)
    (templates / "internal" / "declared.fr.toy.j2").write_text(
        "[toy] {% include 'internal/declared.fr.text.j2' %}", encoding="utf-8"
    )
    settings = settings_from_dict({**CONFIG, "templates_dir": str(templates)})
    async with open_runtime(settings, clock=FakeClock(), store=MemoryStore()) as rt:
        adapter = rt.channels[TOY]
        assert isinstance(adapter, ToyChannel)
        assert (adapter.greeting, adapter.rate) == ("bonjour", 2.0)  # settings and limits
        incident = await rt.service.declare(
            Actor("cellule", Role.RESPONDER),
            IncidentDraft.from_mapping(
                {"title": "Orbis indisponible", "systems": ["Orbis"], "severity": "major"}
            ),
        )
        assert await build_dispatcher(rt).drain() == 2
        assert sorted(m.address for m in adapter.sent) == ["@ada", "salle-de-crise"]
        for message in adapter.sent:
            assert message.channel == TOY
            assert message.bodies["toy"].startswith("[toy] ")
            assert "Orbis" in message.bodies["toy"]
            assert message.callback_token and message.idempotency_key
        rows = await rt.store.deliveries(incident.id)
        assert {(d.channel, d.state) for d in rows} == {(TOY, DeliveryState.DELIVERED)}


def test_build_channels_builds_every_configured_channel(toy: ChannelSpec[ToySettings]) -> None:
    settings = settings_from_dict(CONFIG)
    built = build_channels(settings, session=None)  # type: ignore[arg-type]
    assert set(built) == {ChannelName.WEBHOOK, TOY}


def test_another_package_adds_a_channel_through_an_entry_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    point = EntryPoint("toy", f"{__name__}:TOY_SPEC", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(
        registry, "entry_points", lambda group: [point] if group == point.group else []
    )
    try:
        registry.load_entry_points()
        assert spec_for(TOY) is TOY_SPEC
        assert settings_from_dict(CONFIG).channels.get(TOY_SPEC) is not None
    finally:
        registry.unregister(TOY)
    assert spec_for(TOY) is None
