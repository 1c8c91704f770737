"""Banking: identify the customer, read balances, transfer under balance and daily limits, freeze
accounts."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from k2core.agentic.domains.base import FIRST, LAST, PERSONAS, Action, Blueprint, Domain, Toolkit, ToolError, ToolType, tool


class Customer(BaseModel):
    customer_id: str
    name: str
    phone: str


class Account(BaseModel):
    account_id: str
    customer_id: str
    kind: Literal["checking", "savings"]
    balance: float
    daily_limit: float
    sent_today: float = 0.0
    frozen: bool = False
    freeze_reason: str = ""


class Transfer(BaseModel):
    transfer_id: str
    from_account_id: str
    to_account_id: str
    amount: float


class BankDB(BaseModel):
    customers: dict[str, Customer]
    accounts: dict[str, Account]
    transfers: list[Transfer] = []


class BankToolkit(Toolkit):
    db_model = BankDB
    db: BankDB

    def _account(self, account_id: str) -> Account:
        if account_id not in self.db.accounts:
            raise ToolError(f"Error: account {account_id} not found")
        return self.db.accounts[account_id]

    @tool(ToolType.READ)
    def find_customer_by_phone(self, phone: str) -> str:
        """Find a customer's id from their phone number.

        Args:
            phone: The phone number, digits only, e.g. "5550123456".
        """
        for c in self.db.customers.values():
            if c.phone == phone:
                return c.customer_id
        raise ToolError("Error: customer not found")

    @tool(ToolType.READ)
    def list_accounts(self, customer_id: str) -> list[Account]:
        """List a customer's accounts with balances and limits.

        Args:
            customer_id: The customer's id.
        """
        if customer_id not in self.db.customers:
            raise ToolError(f"Error: customer {customer_id} not found")
        return [a for a in self.db.accounts.values() if a.customer_id == customer_id]

    @tool(ToolType.READ)
    def get_balance(self, account_id: str) -> float:
        """Get an account's balance in dollars.

        Args:
            account_id: The account id, e.g. "A100".
        """
        return self._account(account_id).balance

    @tool(ToolType.WRITE)
    def transfer_funds(self, from_account_id: str, to_account_id: str, amount: float) -> Transfer:
        """Move money between two accounts.

        Args:
            from_account_id: The account the money leaves.
            to_account_id: The account the money goes to.
            amount: Dollars to move (positive).
        """
        src, dst = self._account(from_account_id), self._account(to_account_id)
        if from_account_id == to_account_id:
            raise ToolError("Error: the two accounts must differ")
        if amount <= 0:
            raise ToolError("Error: the amount must be positive")
        if src.frozen or dst.frozen:
            raise ToolError("Error: a frozen account cannot send or receive money")
        if amount > src.balance:
            raise ToolError(f"Error: insufficient funds (balance ${src.balance:.2f})")
        if src.sent_today + amount > src.daily_limit:
            raise ToolError(f"Error: over the daily limit (${src.daily_limit - src.sent_today:.2f} left today)")
        src.balance = round(src.balance - amount, 2)
        src.sent_today = round(src.sent_today + amount, 2)
        dst.balance = round(dst.balance + amount, 2)
        t = Transfer(transfer_id=f"T{len(self.db.transfers) + 1}", from_account_id=from_account_id,
                     to_account_id=to_account_id, amount=round(amount, 2))
        self.db.transfers.append(t)
        return t

    @tool(ToolType.WRITE)
    def freeze_account(self, account_id: str, reason: Literal["lost card", "fraud"]) -> Account:
        """Freeze an account so no money can move.

        Args:
            account_id: The account id.
            reason: "lost card" or "fraud".
        """
        acct = self._account(account_id)
        if acct.frozen:
            raise ToolError(f"Error: account {account_id} is frozen already")
        acct.frozen, acct.freeze_reason = True, reason
        return acct


class Bank(Domain):
    name = "bank"
    toolkit = BankToolkit
    policy = (Path(__file__).parent / "policy.md").read_text()
    description = "bank accounts: balances, transfers within limits, freezing"

    @classmethod
    def make_db(cls, seed: int, size: int) -> BankDB:
        rng = random.Random(seed)
        customers, accounts = {}, {}
        for c in range(size):
            cid = f"c{100 + c}"
            customers[cid] = Customer(customer_id=cid, name=f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                                      phone=f"555{rng.randint(1_000_000, 9_999_999)}")
            for kind in ("checking", "savings"):
                aid = f"A{100 + len(accounts)}"
                accounts[aid] = Account(account_id=aid, customer_id=cid, kind=kind,
                                        balance=round(rng.uniform(20, 5000), 2),
                                        daily_limit=rng.choice([500.0, 1000.0, 2500.0]),
                                        frozen=rng.random() < 0.08)
        return BankDB(customers=customers, accounts=accounts)

    @classmethod
    def propose(cls, db: BankDB, rng: random.Random) -> Blueprint:
        cust = rng.choice(list(db.customers.values()))
        accts = {a.kind: a for a in db.accounts.values() if a.customer_id == cust.customer_id}
        chk, sav = accts["checking"], accts["savings"]
        known = {"phone": cust.phone, "name": cust.name}
        look = [Action("find_customer_by_phone", {"phone": cust.phone}),
                Action("list_accounts", {"customer_id": cust.customer_id})]
        persona = rng.choice(PERSONAS)
        kind = rng.choice(["balance", "transfer", "transfer", "freeze", "transfer_report"])
        if kind == "balance":
            return Blueprint("balance", "you want to know the balance of your savings account", known, look,
                             "Ask for your savings balance.", communicate=[f"${sav.balance:.2f}"], persona=persona,
                             checkpoints=["customer identified", "balance read"])
        if kind == "freeze":
            reason = rng.choice(["lost card", "fraud"])
            return Blueprint("freeze", f"you lost your card and want your checking account frozen ({reason})", known,
                             look + [Action("freeze_account", {"account_id": chk.account_id, "reason": reason})],
                             f"Ask to freeze the checking account; the reason is '{reason}'.", persona=persona,
                             checkpoints=["customer identified", "checking account frozen"], difficulty=2)
        amount = float(rng.choice([50, 100, 250, 400, 800, 1200, 3000]))
        steps = look + [Action("transfer_funds", {"from_account_id": chk.account_id, "to_account_id": sav.account_id,
                                                  "amount": amount})]
        if kind == "transfer":       # may break a limit: then the blueprint fails verification
            return Blueprint("transfer", f"you want to move ${amount:.2f} from checking to savings",
                             {**known, "amount": f"${amount:.2f}"}, steps, "Ask for the transfer.", persona=persona,
                             checkpoints=["customer identified", "within balance and limit", "transfer made"],
                             difficulty=2)
        return Blueprint("transfer_report", f"you want to move ${amount:.2f} from checking to savings and hear the "
                                            "new savings balance", {**known, "amount": f"${amount:.2f}"},
                         steps + [Action("get_balance", {"account_id": sav.account_id})],
                         "Ask for the transfer, then the new savings balance.",
                         communicate=[f"${sav.balance + amount:.2f}"], persona=persona,
                         checkpoints=["customer identified", "transfer made", "new balance reported"], difficulty=3)
