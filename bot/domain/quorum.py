"""Site confirmation quorum: who confirmed, per site; escalation of sites short of it.

Department heads' acknowledgements are counted per site. A policy's ``confirm_per_site: N``
escalates a site with fewer than N confirmations after the policy delay, to that site's
deputies, on the escalation channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from bot.domain.audiences import Audience, person_delivery, statement_kind_for
from bot.domain.models import DeliveryState, Incident, TimelineEntry
from bot.domain.publishing import Publisher, all_deliveries
from bot.ports import Changes, SiteQuorum


@dataclass(frozen=True)
class SiteView:
    """Confirmations of one site."""

    site: str
    confirmed: int
    by: tuple[tuple[str, datetime], ...]
    needed: int
    escalated: bool


class Quorum:
    """Counts confirmations per site and escalates the sites short of their quorum."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def _quorum_audiences(self, incident: Incident) -> list[Audience]:
        return [
            self.publisher.audiences[name]
            for name in incident.audiences
            if name in self.publisher.audiences
            and self.publisher.audiences[name].policy.require_ack
        ]

    async def site_views(self, incident_id: str) -> list[SiteView]:
        """For each site: how many responsible people confirmed, who and when."""
        incident = await self.publisher.incident(incident_id)
        audiences = self._quorum_audiences(incident)
        sites = list(incident.sites)
        for audience in audiences:
            for person in audience.members:
                if person.site and person.site not in sites:
                    sites.append(person.site)
        needed = max((a.policy.confirm_per_site for a in audiences), default=0)
        confirmations: dict[str, dict[str, datetime]] = {site: {} for site in sites}
        for delivery in await all_deliveries(self.publisher, incident.id):
            if (
                delivery.state == DeliveryState.ACKNOWLEDGED
                and delivery.site
                and delivery.acknowledged_at is not None
            ):
                people = confirmations.setdefault(delivery.site, {})
                first = people.get(delivery.recipient)
                if first is None or delivery.acknowledged_at < first:
                    people[delivery.recipient] = delivery.acknowledged_at
        escalated = {
            str(e.detail.get("site"))
            for e in await self.publisher.store.timeline(incident.id)
            if e.action == "site_escalated"
        }
        return [
            SiteView(
                site,
                len(people),
                tuple(sorted(people.items(), key=lambda p: p[1])),
                needed,
                site in escalated,
            )
            for site, people in confirmations.items()
        ]

    async def escalate_sites(self, now: datetime | None = None) -> list[tuple[str, str]]:
        """Escalate every site short of its quorum past the policy delay; returns (incident,
        site) pairs escalated now.

        One query per quorum audience counts, in the store, the confirmations per site of the
        open incidents past the delay; no delivery is loaded, only those incidents' own rows.
        """
        now = now or self.publisher.clock.now()
        done: list[tuple[str, str]] = []
        for audience in self.publisher.audiences.values():
            policy = audience.policy
            if (
                not (policy.require_ack and policy.confirm_per_site)
                or policy.escalate_after_s is None
            ):
                continue
            deputies = sorted({p.name for p in audience.members if p.deputy})
            found = await self.publisher.store.site_quorum(
                audience.name, deputies, now - timedelta(seconds=policy.escalate_after_s)
            )
            by_incident: dict[str, dict[str, SiteQuorum]] = {}
            for quorum in found:
                by_incident.setdefault(quorum.incident_id, {})[quorum.site] = quorum
            for incident_id, sites in by_incident.items():
                incident = await self.publisher.store.get_incident(incident_id)
                if incident is None or audience.name not in incident.audiences:
                    continue
                names = [*incident.sites, *(p.site for p in audience.members if p.site), *sites]
                for site in dict.fromkeys(names):
                    quorum = sites.get(site, SiteQuorum(incident_id, site, 0, False))
                    if quorum.escalated or quorum.confirmed >= policy.confirm_per_site:
                        continue
                    view = SiteView(site, quorum.confirmed, (), policy.confirm_per_site, False)
                    if await self._escalate_site(incident, audience, view, now):
                        done.append((incident_id, site))
        return done

    async def _escalate_site(
        self, incident: Incident, audience: Audience, view: SiteView, now: datetime
    ) -> bool:
        deputies = [p for p in audience.members if p.deputy and p.site == view.site]
        statements = await self.publisher.store.statements(incident.id)
        latest_seq = max((s.seq for s in statements if s.kind == audience.kind), default=None)
        deliveries = []
        for person in deputies:
            order = [c for c in (audience.policy.escalate_via, *audience.policy.channels) if c]
            channel = next(
                (
                    c
                    for c in order
                    if person.contacts.get(c.value)
                    and (
                        self.publisher.usable_channels is None
                        or c in self.publisher.usable_channels
                    )
                ),
                None,
            )
            if channel is None or latest_seq is None:
                continue
            kind = statement_kind_for(channel, audience.kind)
            locale = person.locale or incident.locale
            found = [
                s
                for s in statements
                if s.seq == latest_seq and s.kind == kind and s.locale == locale
            ]
            if found:
                statement = max(found, key=lambda s: s.version)
                deliveries.append(
                    person_delivery(audience, person, channel, statement, latest_seq, now)
                )
        seq = await self.publisher.next_seq(incident.id)
        await self.publisher.commit(
            Changes(
                deliveries=deliveries,
                timeline=[
                    TimelineEntry(
                        incident.id,
                        seq,
                        now,
                        "tocsin",
                        "site_escalated",
                        {
                            "site": view.site,
                            "confirmed": view.confirmed,
                            "needed": audience.policy.confirm_per_site,
                            "deputies": [d.recipient for d in deliveries],
                        },
                    )
                ],
            )
        )
        return True


class HasQuorum(Protocol):
    """What holds the quorum watch (the incident service)."""

    @property
    def quorum(self) -> Quorum: ...


async def site_views(service: HasQuorum, incident_id: str) -> list[SiteView]:
    """:meth:`Quorum.site_views` of the service's quorum watch."""
    return await service.quorum.site_views(incident_id)


async def escalate_sites(service: HasQuorum, now: datetime | None = None) -> list[tuple[str, str]]:
    """:meth:`Quorum.escalate_sites` of the service's quorum watch."""
    return await service.quorum.escalate_sites(now)
