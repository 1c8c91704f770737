"""Travel bookings: search flights, book, change and cancel under fare rules (flex vs basic)."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from k2core.agentic.domains.base import (CITIES, FIRST, LAST, PERSONAS, Action, Blueprint, Domain, Toolkit, ToolError,
                                         ToolType, tool)

Fare = Literal["basic", "flex"]
DAYS = [f"2027-03-{d:02d}" for d in range(1, 8)]
FLEX = 1.3


class Flight(BaseModel):
    flight_id: str
    origin: str
    destination: str
    date: str
    depart: str
    price: float
    seats_left: int


class Reservation(BaseModel):
    reservation_id: str
    user_id: str
    flight_id: str
    fare: Fare
    status: Literal["booked", "cancelled"]
    paid: float


class Traveller(BaseModel):
    user_id: str
    name: str
    email: str
    travel_credit: float = 0.0


class TravelDB(BaseModel):
    flights: dict[str, Flight]
    reservations: dict[str, Reservation]
    users: dict[str, Traveller]


def fare_price(flight: Flight, fare: str) -> float:
    return round(flight.price * (FLEX if fare == "flex" else 1.0), 2)


class TravelToolkit(Toolkit):
    db_model = TravelDB
    db: TravelDB

    def _flight(self, flight_id: str) -> Flight:
        if flight_id not in self.db.flights:
            raise ToolError(f"Error: flight {flight_id} not found")
        return self.db.flights[flight_id]

    def _reservation(self, reservation_id: str) -> Reservation:
        if reservation_id not in self.db.reservations:
            raise ToolError(f"Error: reservation {reservation_id} not found")
        return self.db.reservations[reservation_id]

    @tool(ToolType.READ)
    def find_user_id_by_email(self, email: str) -> str:
        """Find a traveller's user id from their email address.

        Args:
            email: The traveller's email, e.g. "ava.kim@example.com".
        """
        for u in self.db.users.values():
            if u.email.lower() == email.lower():
                return u.user_id
        raise ToolError("Error: user not found")

    @tool(ToolType.READ)
    def get_user_reservations(self, user_id: str) -> list[Reservation]:
        """List a traveller's reservations.

        Args:
            user_id: The traveller's user id.
        """
        if user_id not in self.db.users:
            raise ToolError(f"Error: user {user_id} not found")
        return [r for r in self.db.reservations.values() if r.user_id == user_id]

    @tool(ToolType.READ)
    def get_reservation(self, reservation_id: str) -> Reservation:
        """Get one reservation's flight, fare, status and amount paid.

        Args:
            reservation_id: The reservation id, e.g. "R1001".
        """
        return self._reservation(reservation_id)

    @tool(ToolType.READ)
    def search_flights(self, origin: str, destination: str, date: str) -> list[Flight]:
        """Search flights on a route and date, cheapest first.

        Args:
            origin: The departure city, e.g. "Boston".
            destination: The arrival city, e.g. "Denver".
            date: The date as YYYY-MM-DD.
        """
        hits = [f for f in self.db.flights.values()
                if (f.origin.lower(), f.destination.lower(), f.date) == (origin.lower(), destination.lower(), date)]
        return sorted(hits, key=lambda f: (f.price, f.flight_id))

    @tool(ToolType.WRITE)
    def book_flight(self, user_id: str, flight_id: str, fare: Fare) -> Reservation:
        """Book a seat on a flight for a traveller; flex fares cost 30% more than the listed price.

        Args:
            user_id: The traveller's user id.
            flight_id: The flight id, e.g. "KF120".
            fare: "basic" (no changes, no refund) or "flex" (changeable, refundable as credit).
        """
        if user_id not in self.db.users:
            raise ToolError(f"Error: user {user_id} not found")
        flight = self._flight(flight_id)
        if flight.seats_left < 1:
            raise ToolError(f"Error: flight {flight_id} is full")
        flight.seats_left -= 1
        rid = f"R{1001 + len(self.db.reservations)}"
        res = Reservation(reservation_id=rid, user_id=user_id, flight_id=flight_id, fare=fare, status="booked",
                          paid=fare_price(flight, fare))
        self.db.reservations[rid] = res
        return res

    @tool(ToolType.WRITE)
    def change_flight(self, reservation_id: str, new_flight_id: str) -> Reservation:
        """Move a flex reservation to another flight on the same route; the fare difference is charged.

        Args:
            reservation_id: The reservation id.
            new_flight_id: The flight to move to.
        """
        res = self._reservation(reservation_id)
        if res.status != "booked":
            raise ToolError(f"Error: reservation {reservation_id} is {res.status}")
        if res.fare != "flex":
            raise ToolError("Error: basic fares cannot be changed")
        old, new = self._flight(res.flight_id), self._flight(new_flight_id)
        if (old.origin, old.destination) != (new.origin, new.destination):
            raise ToolError("Error: the new flight must be on the same route")
        if new.seats_left < 1:
            raise ToolError(f"Error: flight {new_flight_id} is full")
        old.seats_left += 1
        new.seats_left -= 1
        res.flight_id = new_flight_id
        res.paid = round(max(res.paid, fare_price(new, "flex")), 2)
        return res

    @tool(ToolType.WRITE)
    def cancel_reservation(self, reservation_id: str) -> Reservation:
        """Cancel a flex reservation; the amount paid becomes travel credit.

        Args:
            reservation_id: The reservation id.
        """
        res = self._reservation(reservation_id)
        if res.status != "booked":
            raise ToolError(f"Error: reservation {reservation_id} is {res.status}")
        if res.fare != "flex":
            raise ToolError("Error: basic fares are non-refundable and cannot be cancelled")
        res.status = "cancelled"
        self._flight(res.flight_id).seats_left += 1
        user = self.db.users[res.user_id]
        user.travel_credit = round(user.travel_credit + res.paid, 2)
        return res


class Travel(Domain):
    name = "travel"
    toolkit = TravelToolkit
    policy = (Path(__file__).parent / "policy.md").read_text()
    description = "flight bookings: search, book, change and cancel under fare rules"

    @classmethod
    def make_db(cls, seed: int, size: int) -> TravelDB:
        rng = random.Random(seed)
        flights = {}
        routes = [(a, b) for a in CITIES[:5] for b in CITIES[:5] if a != b]
        for k, (a, b) in enumerate(rng.sample(routes, min(len(routes), 6 + size // 4))):
            for day in DAYS:
                for _ in range(rng.randint(1, 3)):
                    fid = f"KF{100 + len(flights)}"
                    flights[fid] = Flight(flight_id=fid, origin=a, destination=b, date=day,
                                          depart=f"{rng.randint(6, 21):02d}:{rng.choice(['00', '30'])}",
                                          price=round(rng.uniform(80, 450), 2), seats_left=rng.choice([0, 1, 2, 5, 9]))
        users, reservations = {}, {}
        for u in range(size):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            uid = f"t{1000 + u}"
            users[uid] = Traveller(user_id=uid, name=f"{first} {last}", email=f"{first}.{last}.{u}@example.com".lower())
            for _ in range(rng.randint(0, 2)):
                f = rng.choice(list(flights.values()))
                fare = rng.choice(["basic", "flex"])
                rid = f"R{1001 + len(reservations)}"
                reservations[rid] = Reservation(reservation_id=rid, user_id=uid, flight_id=f.flight_id, fare=fare,
                                                status="booked", paid=fare_price(f, fare))
        return TravelDB(flights=flights, reservations=reservations, users=users)

    @classmethod
    def propose(cls, db: TravelDB, rng: random.Random) -> Blueprint:
        user = rng.choice(list(db.users.values()))
        known = {"email": user.email}
        ident = [Action("find_user_id_by_email", {"email": user.email})]
        persona = rng.choice(PERSONAS)
        mine = [r for r in db.reservations.values() if r.user_id == user.user_id]
        kind = rng.choice(["book", "book", "change", "cancel"] if mine else ["book"])
        if kind == "book":
            f = rng.choice(list(db.flights.values()))
            fare = rng.choice(["basic", "flex"])
            route = {"origin": f.origin, "destination": f.destination, "date": f.date}
            hits = sorted((x for x in db.flights.values()
                           if (x.origin, x.destination, x.date) == (f.origin, f.destination, f.date)),
                          key=lambda x: (x.price, x.flight_id))
            best = hits[0]            # the cheapest; if it is full the blueprint fails verification
            return Blueprint("book", f"you want the cheapest {fare} flight from {f.origin} to {f.destination} on {f.date}",
                             {**known, "from": f.origin, "to": f.destination, "date": f.date, "fare": fare},
                             ident + [Action("search_flights", route),
                                      Action("book_flight", {"user_id": user.user_id, "flight_id": best.flight_id,
                                                             "fare": fare})],
                             "Ask for the cheapest flight and book it.",
                             communicate=[best.flight_id, best.depart, f"${fare_price(best, fare):.2f}"], persona=persona,
                             checkpoints=["traveller identified", "flights searched", "cheapest flight booked"],
                             difficulty=2)
        res = rng.choice(mine)
        flight = db.flights[res.flight_id]
        known = {**known, "reservation id": res.reservation_id}
        look = ident + [Action("get_reservation", {"reservation_id": res.reservation_id})]
        if kind == "cancel":
            if res.fare == "basic":         # policy: refuse, say why
                return Blueprint("cancel_refused", f"you want to cancel reservation {res.reservation_id}", known, look,
                                 "Ask to cancel; accept the answer if it is not possible.",
                                 communicate=["non-refundable"], persona=persona,
                                 checkpoints=["traveller identified", "fare is basic", "cancellation refused"],
                                 difficulty=2)
            return Blueprint("cancel", f"you want to cancel reservation {res.reservation_id}", known,
                             look + [Action("cancel_reservation", {"reservation_id": res.reservation_id})],
                             "Ask to cancel and how much credit you get.", communicate=[f"${res.paid:.2f}"],
                             persona=persona, checkpoints=["traveller identified", "fare is flex", "cancelled"],
                             difficulty=2)
        alternatives = sorted((x for x in db.flights.values() if (x.origin, x.destination) ==
                               (flight.origin, flight.destination) and x.flight_id != flight.flight_id),
                              key=lambda x: (x.date, x.depart, x.flight_id))
        if not alternatives:
            return Blueprint("change", "no other flight on this route", known, look)
        new = rng.choice(alternatives)
        return Blueprint("change", f"you want to move reservation {res.reservation_id} to flight {new.flight_id}",
                         {**known, "new flight": new.flight_id},
                         look + [Action("change_flight", {"reservation_id": res.reservation_id,
                                                          "new_flight_id": new.flight_id})],
                         "Ask to move the reservation to the new flight.", communicate=[new.flight_id], persona=persona,
                         checkpoints=["traveller identified", "fare is flex", "seat free", "flight changed"], difficulty=3)
