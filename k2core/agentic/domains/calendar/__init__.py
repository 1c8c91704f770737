"""A team calendar: find people, free slots, create / move / cancel meetings under constraints
(working hours, a 30-minute grid, no overlaps)."""
from __future__ import annotations

import random
from pathlib import Path

from pydantic import BaseModel

from k2core.agentic.domains.base import FIRST, LAST, PERSONAS, Action, Blueprint, Domain, Toolkit, ToolError, ToolType, tool

DAYS = ["2027-04-05", "2027-04-06", "2027-04-07", "2027-04-08", "2027-04-09"]
OPEN, CLOSE, GRID = 9 * 60, 17 * 60, 30
TITLES = ["Design review", "1:1", "Sprint planning", "Budget sync", "Hiring debrief", "Customer call", "Retro"]


def _min(hhmm: str) -> int:
    try:
        h, m = hhmm.split(":")
        return int(h) * 60 + int(m)
    except ValueError:
        raise ToolError(f"Error: time {hhmm!r} is not HH:MM") from None


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


class Person(BaseModel):
    person_id: str
    name: str


class Event(BaseModel):
    event_id: str
    title: str
    day: str
    start: str
    end: str
    attendees: list[str]


class CalendarDB(BaseModel):
    people: dict[str, Person]
    events: dict[str, Event]
    next_id: int = 1


class CalendarToolkit(Toolkit):
    db_model = CalendarDB
    db: CalendarDB

    def _busy(self, person_ids: list[str], day: str, skip: str | None = None) -> list[tuple[int, int]]:
        return [(_min(e.start), _min(e.end)) for e in self.db.events.values()
                if e.day == day and e.event_id != skip and set(e.attendees) & set(person_ids)]

    def _check_slot(self, person_ids: list[str], day: str, start: int, duration: int, skip: str | None = None) -> None:
        if day not in DAYS:
            raise ToolError(f"Error: {day} is not a working day in the calendar ({DAYS[0]} to {DAYS[-1]})")
        for p in person_ids:
            if p not in self.db.people:
                raise ToolError(f"Error: person {p} not found")
        if duration <= 0 or duration % GRID or start % GRID:
            raise ToolError("Error: meetings start and last in multiples of 30 minutes")
        if start < OPEN or start + duration > CLOSE:
            raise ToolError("Error: meetings must be between 09:00 and 17:00")
        for a, b in self._busy(person_ids, day, skip):
            if start < b and a < start + duration:
                raise ToolError(f"Error: overlaps a meeting from {_hhmm(a)} to {_hhmm(b)}")

    @tool(ToolType.READ)
    def find_person(self, name: str) -> str:
        """Find a person's id from their full name.

        Args:
            name: The full name, e.g. "Mia Rossi".
        """
        for p in self.db.people.values():
            if p.name.lower() == name.lower():
                return p.person_id
        raise ToolError(f"Error: nobody called {name}")

    @tool(ToolType.READ)
    def list_events(self, person_id: str, day: str) -> list[Event]:
        """List one person's meetings on a day, in time order.

        Args:
            person_id: The person's id.
            day: The day as YYYY-MM-DD.
        """
        if person_id not in self.db.people:
            raise ToolError(f"Error: person {person_id} not found")
        return sorted((e for e in self.db.events.values() if e.day == day and person_id in e.attendees),
                      key=lambda e: e.start)

    @tool(ToolType.READ)
    def find_free_slots(self, person_ids: list[str], day: str, duration_minutes: int) -> list[str]:
        """Start times (HH:MM, 30-minute grid) on a day when all the people are free for the duration.

        Args:
            person_ids: The attendees' ids.
            day: The day as YYYY-MM-DD.
            duration_minutes: The meeting length in minutes (a multiple of 30).
        """
        out = []
        for start in range(OPEN, CLOSE, GRID):
            try:
                self._check_slot(person_ids, day, start, duration_minutes)
            except ToolError:
                continue
            out.append(_hhmm(start))
        return out

    @tool(ToolType.WRITE)
    def create_event(self, title: str, day: str, start: str, duration_minutes: int, attendees: list[str]) -> Event:
        """Create a meeting for the attendees.

        Args:
            title: The meeting title.
            day: The day as YYYY-MM-DD.
            start: The start time as HH:MM.
            duration_minutes: The length in minutes (a multiple of 30).
            attendees: The attendees' person ids.
        """
        if not attendees:
            raise ToolError("Error: a meeting needs attendees")
        s = _min(start)
        self._check_slot(attendees, day, s, duration_minutes)
        eid = f"ev{self.db.next_id}"
        self.db.next_id += 1
        ev = Event(event_id=eid, title=title, day=day, start=_hhmm(s), end=_hhmm(s + duration_minutes),
                   attendees=sorted(attendees))
        self.db.events[eid] = ev
        return ev

    @tool(ToolType.WRITE)
    def move_event(self, event_id: str, day: str, start: str) -> Event:
        """Move a meeting to another day or time; it keeps its length and attendees.

        Args:
            event_id: The meeting's id, e.g. "ev3".
            day: The new day as YYYY-MM-DD.
            start: The new start time as HH:MM.
        """
        ev = self.db.events.get(event_id)
        if ev is None:
            raise ToolError(f"Error: event {event_id} not found")
        s, length = _min(start), _min(ev.end) - _min(ev.start)
        self._check_slot(ev.attendees, day, s, length, skip=event_id)
        ev.day, ev.start, ev.end = day, _hhmm(s), _hhmm(s + length)
        return ev

    @tool(ToolType.WRITE)
    def cancel_event(self, event_id: str) -> str:
        """Cancel a meeting.

        Args:
            event_id: The meeting's id.
        """
        if self.db.events.pop(event_id, None) is None:
            raise ToolError(f"Error: event {event_id} not found")
        return f"Cancelled {event_id}"


class Calendar(Domain):
    name = "calendar"
    toolkit = CalendarToolkit
    policy = (Path(__file__).parent / "policy.md").read_text()
    description = "team calendar: free slots, create / move / cancel meetings under constraints"

    @classmethod
    def make_db(cls, seed: int, size: int) -> CalendarDB:
        rng = random.Random(seed)
        people, names = {}, set()
        while len(people) < max(3, size):
            name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
            if name not in names:
                names.add(name)
                pid = f"u{len(people) + 1}"
                people[pid] = Person(person_id=pid, name=name)
        db = CalendarDB(people=people, events={})
        tk = CalendarToolkit(db)
        for _ in range(len(people) * 4):
            try:
                tk.create_event(rng.choice(TITLES), rng.choice(DAYS), _hhmm(rng.randrange(OPEN, CLOSE - 60, GRID)),
                                rng.choice([30, 60, 90]), rng.sample(list(people), rng.randint(1, 3)))
            except ToolError:
                pass
        return db

    @classmethod
    def propose(cls, db: CalendarDB, rng: random.Random) -> Blueprint:
        persona = rng.choice(PERSONAS)
        kind = rng.choice(["schedule", "schedule", "move", "cancel", "agenda"])
        people = list(db.people.values())
        me = rng.choice(people)
        day = rng.choice(DAYS)
        known = {"your name": me.name}
        tk = CalendarToolkit(db.model_copy(deep=True))
        if kind == "schedule":
            other = rng.choice([p for p in people if p.person_id != me.person_id])
            duration = rng.choice([30, 60])
            title = rng.choice(TITLES)
            slots = tk.find_free_slots([me.person_id, other.person_id], day, duration)
            start = slots[0] if slots else "09:00"       # a full day fails verification
            ids = [me.person_id, other.person_id]
            return Blueprint("schedule", f"you want a {duration}-minute '{title}' with {other.name} on {day}, "
                                         "at the earliest time you are both free",
                             {**known, "other person": other.name, "day": day, "length": f"{duration} minutes",
                              "title": title},
                             [Action("find_person", {"name": me.name}), Action("find_person", {"name": other.name}),
                              Action("find_free_slots", {"person_ids": ids, "day": day, "duration_minutes": duration}),
                              Action("create_event", {"title": title, "day": day, "start": start,
                                                      "duration_minutes": duration, "attendees": ids})],
                             "Ask for the meeting at the earliest common free time.", communicate=[start],
                             persona=persona, checkpoints=["both people found", "free slots computed",
                                                           "meeting created at the earliest slot"], difficulty=3)
        mine = sorted((e for e in db.events.values() if me.person_id in e.attendees), key=lambda e: (e.day, e.start))
        if not mine or kind == "agenda":
            events = tk.list_events(me.person_id, day)
            return Blueprint("agenda", f"you want to know your first meeting on {day}", {**known, "day": day},
                             [Action("find_person", {"name": me.name}),
                              Action("list_events", {"person_id": me.person_id, "day": day})],
                             "Ask what your first meeting that day is and when it starts.",
                             communicate=[events[0].start] if events else [], persona=persona,
                             checkpoints=["person found", "events listed"])
        ev = rng.choice(mine)
        known = {**known, "meeting": f"'{ev.title}' on {ev.day} at {ev.start}", "meeting id": ev.event_id}
        look = [Action("find_person", {"name": me.name}), Action("list_events", {"person_id": me.person_id, "day": ev.day})]
        if kind == "cancel":
            return Blueprint("cancel", f"you want to cancel the meeting '{ev.title}' on {ev.day} at {ev.start}", known,
                             look + [Action("cancel_event", {"event_id": ev.event_id})], "Ask to cancel the meeting.",
                             persona=persona, checkpoints=["meeting found", "meeting cancelled"], difficulty=2)
        new_day = rng.choice(DAYS)
        start = _hhmm(rng.randrange(OPEN, CLOSE - 60, GRID))
        return Blueprint("move", f"you want to move '{ev.title}' ({ev.day} {ev.start}) to {new_day} at {start}",
                         {**known, "new day": new_day, "new time": start},
                         look + [Action("move_event", {"event_id": ev.event_id, "day": new_day, "start": start})],
                         "Ask to move the meeting; if the time is taken, accept that it cannot be moved.",
                         communicate=[start], persona=persona,
                         checkpoints=["meeting found", "new slot free for all attendees", "meeting moved"], difficulty=2)
