"""Retail orders (τ²-bench's retail domain in miniature): authenticate, look up orders and
products, cancel pending orders, change their address, return or exchange delivered items."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from k2core.agentic.domains.base import (CITIES, FIRST, LAST, PERSONAS, Action, Blueprint, Domain, Toolkit, ToolError,
                                         ToolType, tool)

Status = Literal["pending", "processed", "delivered", "cancelled", "returned", "exchanged"]
PRODUCTS = {"T-Shirt": {"color": ["red", "blue", "black"], "size": ["S", "M", "L"]},
            "Water Bottle": {"capacity": ["500ml", "1000ml"], "color": ["green", "steel"]},
            "Desk Lamp": {"color": ["white", "black"], "power": ["battery", "plug"]},
            "Sneakers": {"size": ["8", "9", "10", "11"], "material": ["leather", "mesh"]},
            "Backpack": {"color": ["grey", "navy"], "capacity": ["20L", "30L"]}}
STREETS = ["Oak St", "Maple Ave", "Pine Rd", "Cedar Ln", "Elm St", "Birch Way"]


class Variant(BaseModel):
    item_id: str
    options: dict[str, str]
    price: float
    available: bool


class Product(BaseModel):
    product_id: str
    name: str
    variants: dict[str, Variant]


class Address(BaseModel):
    street: str
    city: str
    zip: str


class User(BaseModel):
    user_id: str
    first_name: str
    last_name: str
    zip: str
    email: str
    address: Address
    orders: list[str]


class OrderItem(BaseModel):
    item_id: str
    product_id: str
    name: str
    options: dict[str, str]
    price: float


class Order(BaseModel):
    order_id: str
    user_id: str
    status: Status
    items: list[OrderItem]
    address: Address
    refund: float = 0.0
    note: str = ""


class RetailDB(BaseModel):
    products: dict[str, Product]
    users: dict[str, User]
    orders: dict[str, Order]


class RetailToolkit(Toolkit):
    db_model = RetailDB
    db: RetailDB

    def _order(self, order_id: str) -> Order:
        order = self.db.orders.get(order_id)
        if order is None:
            raise ToolError(f"Error: order {order_id} not found")
        return order

    @tool(ToolType.READ)
    def find_user_id_by_name_zip(self, first_name: str, last_name: str, zip: str) -> str:
        """Find a user's id from their first name, last name and zip code.

        Args:
            first_name: The user's first name, e.g. "Ava".
            last_name: The user's last name, e.g. "Garcia".
            zip: The zip code of the user's address, e.g. "78701".
        """
        for u in self.db.users.values():
            if (u.first_name.lower(), u.last_name.lower(), u.zip) == (first_name.lower(), last_name.lower(), zip):
                return u.user_id
        raise ToolError("Error: user not found")

    @tool(ToolType.READ)
    def get_user_details(self, user_id: str) -> User:
        """Get a user's profile: name, email, address and order ids.

        Args:
            user_id: The user's id, e.g. "ava_garcia_1234".
        """
        if user_id not in self.db.users:
            raise ToolError(f"Error: user {user_id} not found")
        return self.db.users[user_id]

    @tool(ToolType.READ)
    def get_order_details(self, order_id: str) -> Order:
        """Get an order's status, items, prices and shipping address.

        Args:
            order_id: The order id, e.g. "#W1001".
        """
        return self._order(order_id)

    @tool(ToolType.READ)
    def get_product_details(self, product_id: str) -> Product:
        """Get a product's variants with their options, prices and availability.

        Args:
            product_id: The product id, e.g. "p3".
        """
        if product_id not in self.db.products:
            raise ToolError(f"Error: product {product_id} not found")
        return self.db.products[product_id]

    @tool(ToolType.WRITE)
    def cancel_pending_order(self, order_id: str, reason: Literal["no longer needed", "ordered by mistake"]) -> Order:
        """Cancel a pending order; the whole amount is refunded.

        Args:
            order_id: The order id, e.g. "#W1001".
            reason: Why the user cancels: "no longer needed" or "ordered by mistake".
        """
        order = self._order(order_id)
        if order.status != "pending":
            raise ToolError(f"Error: order {order_id} is {order.status}; only pending orders can be cancelled")
        order.status = "cancelled"
        order.refund = round(sum(i.price for i in order.items), 2)
        order.note = reason
        return order

    @tool(ToolType.WRITE)
    def modify_pending_order_address(self, order_id: str, street: str, city: str, zip: str) -> Order:
        """Change the shipping address of a pending order.

        Args:
            order_id: The order id, e.g. "#W1001".
            street: The new street line, e.g. "12 Oak St".
            city: The new city.
            zip: The new zip code.
        """
        order = self._order(order_id)
        if order.status != "pending":
            raise ToolError(f"Error: order {order_id} is {order.status}; only pending orders can change address")
        order.address = Address(street=street, city=city, zip=zip)
        return order

    @tool(ToolType.WRITE)
    def return_delivered_order_items(self, order_id: str, item_ids: list[str]) -> Order:
        """Return items of a delivered order; their price is refunded.

        Args:
            order_id: The order id, e.g. "#W1001".
            item_ids: The item ids to return (each must be in the order).
        """
        order = self._order(order_id)
        if order.status != "delivered":
            raise ToolError(f"Error: order {order_id} is {order.status}; only delivered orders can be returned")
        owned = [i.item_id for i in order.items]
        if not item_ids or any(i not in owned for i in item_ids):
            raise ToolError(f"Error: items {item_ids} are not all in order {order_id}")
        order.status = "returned"
        order.refund = round(sum(i.price for i in order.items if i.item_id in item_ids), 2)
        return order

    @tool(ToolType.WRITE)
    def exchange_delivered_order_items(self, order_id: str, item_ids: list[str], new_item_ids: list[str]) -> Order:
        """Exchange items of a delivered order for other available variants of the same products.

        Args:
            order_id: The order id, e.g. "#W1001".
            item_ids: The item ids to exchange.
            new_item_ids: The new variants' item ids, one per exchanged item, in the same order.
        """
        order = self._order(order_id)
        if order.status != "delivered":
            raise ToolError(f"Error: order {order_id} is {order.status}; only delivered orders can be exchanged")
        if len(item_ids) != len(new_item_ids) or not item_ids:
            raise ToolError("Error: item_ids and new_item_ids must be non-empty and of the same length")
        by_id = {i.item_id: i for i in order.items}
        diff = 0.0
        for old, new in zip(item_ids, new_item_ids):
            if old not in by_id:
                raise ToolError(f"Error: item {old} is not in order {order_id}")
            product = self.db.products[by_id[old].product_id]
            variant = product.variants.get(new)
            if variant is None:
                raise ToolError(f"Error: {new} is not a variant of {product.name}")
            if not variant.available:
                raise ToolError(f"Error: variant {new} is not available")
            diff += variant.price - by_id[old].price
            by_id[old].item_id, by_id[old].options, by_id[old].price = new, dict(variant.options), variant.price
        order.status = "exchanged"
        order.refund = round(-diff, 2)
        return order

    @tool(ToolType.GENERIC)
    def transfer_to_human_agents(self, summary: str) -> str:
        """Transfer the user to a human agent, with a summary of their issue.

        Args:
            summary: A one-sentence summary of what the user needs.
        """
        return "Transfer successful"


def _money(x: float) -> str:
    return f"${x:.2f}"


class Retail(Domain):
    name = "retail"
    toolkit = RetailToolkit
    policy = (Path(__file__).parent / "policy.md").read_text()
    description = "online store orders: look up, cancel, change address, return, exchange"

    @classmethod
    def make_db(cls, seed: int, size: int) -> RetailDB:
        rng = random.Random(seed)
        products = {}
        n = 0
        for k, (name, opts) in enumerate(PRODUCTS.items()):
            pid = f"p{k + 1}"
            variants = {}
            keys = list(opts)
            for a in opts[keys[0]]:
                for b in opts[keys[1]]:
                    n += 1
                    iid = f"i{1000 + n}"
                    variants[iid] = Variant(item_id=iid, options={keys[0]: a, keys[1]: b},
                                            price=round(rng.uniform(9, 120), 2), available=rng.random() < 0.75)
            products[pid] = Product(product_id=pid, name=name, variants=variants)
        users, orders = {}, {}
        for u in range(size):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            uid = f"{first.lower()}_{last.lower()}_{1000 + u}"
            zip_ = f"{rng.randint(10000, 99999)}"
            addr = Address(street=f"{rng.randint(1, 999)} {rng.choice(STREETS)}", city=rng.choice(CITIES), zip=zip_)
            user = User(user_id=uid, first_name=first, last_name=last, zip=zip_, email=f"{uid}@example.com",
                        address=addr, orders=[])
            for _ in range(rng.randint(1, 3)):
                oid = f"#W{1000 + len(orders)}"
                items = []
                for p in rng.sample(list(products.values()), rng.randint(1, 3)):
                    v = rng.choice(list(p.variants.values()))
                    items.append(OrderItem(item_id=v.item_id, product_id=p.product_id, name=p.name,
                                           options=dict(v.options), price=v.price))
                orders[oid] = Order(order_id=oid, user_id=uid, items=items, address=addr.model_copy(),
                                    status=rng.choice(["pending", "pending", "delivered", "delivered", "processed"]))
                user.orders.append(oid)
            users[uid] = user
        return RetailDB(products=products, users=users, orders=orders)

    @classmethod
    def propose(cls, db: RetailDB, rng: random.Random) -> Blueprint:
        user = rng.choice(list(db.users.values()))
        oid = rng.choice(user.orders)
        order = db.orders[oid]
        ident = [Action("find_user_id_by_name_zip", {"first_name": user.first_name, "last_name": user.last_name,
                                                     "zip": user.zip}),
                 Action("get_order_details", {"order_id": oid})]
        known = {"first name": user.first_name, "last name": user.last_name, "zip code": user.zip, "order id": oid}
        persona = rng.choice(PERSONAS)
        kind = rng.choice(["status", "cancel", "cancel", "address", "return", "exchange", "multi"])
        total = round(sum(i.price for i in order.items), 2)
        if kind == "status":
            return Blueprint("status", f"you want to know the status of order {oid}", known, ident,
                             "Ask for the order's status.", communicate=[order.status],
                             persona=persona, checkpoints=["user authenticated", "order details read"])
        if kind == "cancel":
            reason = rng.choice(["no longer needed", "ordered by mistake"])
            return Blueprint("cancel", f"you want to cancel order {oid} because it is {reason}", known,
                             ident + [Action("cancel_pending_order", {"order_id": oid, "reason": reason})],
                             f"Ask to cancel the order; the reason is '{reason}'.", communicate=[_money(total)],
                             persona=persona, checkpoints=["user authenticated", "order is pending", "order cancelled"],
                             difficulty=2)
        if kind == "address":
            new = Address(street=f"{rng.randint(1, 999)} {rng.choice(STREETS)}", city=rng.choice(CITIES),
                          zip=f"{rng.randint(10000, 99999)}")
            known = {**known, "new street": new.street, "new city": new.city, "new zip code": new.zip}
            return Blueprint("address", f"you moved and want order {oid} shipped to your new address", known,
                             ident + [Action("modify_pending_order_address", {"order_id": oid, **new.model_dump()})],
                             "Ask to change the shipping address of the order.", persona=persona,
                             checkpoints=["user authenticated", "order is pending", "address changed"], difficulty=2)
        item = rng.choice(order.items)
        if kind == "return":
            return Blueprint("return", f"you want to return the {item.name} from order {oid}",
                             {**known, "item": f"{item.name} ({item.item_id})"},
                             ident + [Action("return_delivered_order_items", {"order_id": oid, "item_ids": [item.item_id]})],
                             "Ask to return the item and how much will be refunded.", communicate=[_money(item.price)],
                             persona=persona, checkpoints=["user authenticated", "order is delivered", "item returned"],
                             difficulty=2)
        if kind == "exchange":
            product = db.products[item.product_id]
            other = rng.choice([v for v in product.variants.values() if v.item_id != item.item_id])
            want = ", ".join(f"{k} {v}" for k, v in other.options.items())
            return Blueprint("exchange", f"you want to exchange the {item.name} from order {oid} for the {want} one",
                             {**known, "item": f"{item.name} ({item.item_id})", "wanted variant": want},
                             ident + [Action("get_product_details", {"product_id": item.product_id}),
                                      Action("exchange_delivered_order_items",
                                             {"order_id": oid, "item_ids": [item.item_id], "new_item_ids": [other.item_id]})],
                             "Ask to exchange the item for the wanted variant.", persona=persona,
                             checkpoints=["user authenticated", "order is delivered", "variant available",
                                          "item exchanged"], difficulty=3)
        # multi: cancel this order and return an item from another one
        others = [o for o in user.orders if o != oid]
        if not others:                        # one order only: ask about it instead
            return Blueprint("status", f"you want to know the status of order {oid}", known, ident,
                             "Ask for the order's status.", communicate=[order.status],
                             persona=persona, checkpoints=["user authenticated", "order details read"])
        oid2 = rng.choice(others)
        item2 = rng.choice(db.orders[oid2].items)
        return Blueprint("multi", f"you want to cancel order {oid} (no longer needed) and return the {item2.name} "
                                  f"from order {oid2}",
                         {**known, "second order id": oid2, "item": f"{item2.name} ({item2.item_id})"},
                         ident + [Action("cancel_pending_order", {"order_id": oid, "reason": "no longer needed"}),
                                  Action("get_order_details", {"order_id": oid2}),
                                  Action("return_delivered_order_items", {"order_id": oid2, "item_ids": [item2.item_id]})],
                         "Ask for both changes in one conversation.", communicate=[_money(total), _money(item2.price)],
                         persona=persona, checkpoints=["user authenticated", "first order cancelled",
                                                       "second order's item returned"], difficulty=3)
