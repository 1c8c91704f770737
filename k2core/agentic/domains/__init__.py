"""The built-in executable domains, by name (each: database model + generator, typed tools, policy,
task generator). A domain is code + data files in its own folder; ``get_domain`` finds one."""
from __future__ import annotations

from k2core.agentic.domains.bank import Bank
from k2core.agentic.domains.base import Domain, Toolkit, ToolError, ToolType
from k2core.agentic.domains.calendar import Calendar
from k2core.agentic.domains.retail import Retail
from k2core.agentic.domains.travel import Travel
from k2core.errors import K2Error

DOMAINS: dict[str, type[Domain]] = {d.name: d for d in (Retail, Travel, Calendar, Bank)}

__all__ = ["DOMAINS", "Domain", "Toolkit", "ToolError", "ToolType", "get_domain"]


def get_domain(name: str) -> type[Domain]:
    if name not in DOMAINS:
        raise K2Error(f"unknown domain {name!r}; domains: {', '.join(DOMAINS)}")
    return DOMAINS[name]
