"""The demo's coalition: five partners in four currencies (one without minor units), their
rate cards and economics, the traffic mix and the pace of the simulated period."""

from __future__ import annotations

from dataclasses import dataclass

#: The program validity the demo runs with (the configured one is usually 36 months).
DEMO_VALIDITY_DAYS = 30
#: The simulated period, ending at the current hour.
PERIOD_DAYS = 60
#: Operations per member per day, on average (members differ a lot around it); most are earns.
OPS_PER_MEMBER_DAY = 1.05
#: The hours (of each day) at which the partners' tills send the receipts since the last
#: upload: each partner's receipts go to the ledger as one bulk earn (``earn_many``).
EARN_UPLOAD_HOURS = (23,)
#: Operations per batch transaction (one savepoint each).
COMMIT_EVERY = 300
#: The day the grocer's new rate card (a double-points promotion) takes effect.
RATE_CHANGE_DAY = 30
#: Holds stay open this long unless captured or voided.
HOLD_EXPIRY_S = 1800
#: Recent earns and burns kept per partner as candidates for reversals.
RECENT = 300


@dataclass(frozen=True, slots=True)
class PartnerSpec:
    """A demo partner: its rate card, its typical basket and how much traffic it sees."""

    slug: str
    name: str
    currency: str
    earn_points_per_unit: str
    issue_price_per_point: str
    burn_value_per_point: str
    reimburse_price_per_point: str
    max_burn_share: str | None
    basket: tuple[int, int] | None  # typical purchase, major units; None: takes no purchases
    earn_weight: int
    burn_weight: int
    min_burn: int  # the smallest redemption offered, in points


# Economics (product.md): a point is worth about EUR 0.01; members earn 1-4% of spend; the
# issue price is above the reimbursement, the spread (and breakage) is the operator's margin.
PARTNERS = (
    PartnerSpec("grocer", "Fresh & Co. Grocers", "EUR", "1", "0.01", "0.01", "0.008", "0.5",
                (8, 140), earn_weight=50, burn_weight=25, min_burn=100),
    PartnerSpec("airline", "Sakura Air", "JPY", "0.02", "1.6", "1.5", "1.2", None,
                (9_000, 160_000), earn_weight=8, burn_weight=25, min_burn=500),
    PartnerSpec("fuel", "Route 9 Fuel", "USD", "1", "0.011", "0.011", "0.009", "0.2",
                (25, 95), earn_weight=25, burn_weight=15, min_burn=100),
    PartnerSpec("books", "Marlowe Books", "GBP", "2", "0.009", "0.008", "0.0065", "1",
                (6, 60), earn_weight=17, burn_weight=15, min_burn=100),
    PartnerSpec("charity", "Kind Hearts Foundation", "EUR", "0", "0.01", "0.01", "0.01", None,
                None, earn_weight=0, burn_weight=10, min_burn=50),
)  # fmt: skip
#: The partners by slug.
SPECS = {p.slug: p for p in PARTNERS}
#: From RATE_CHANGE_DAY the grocer runs double points, billed at a volume discount.
GROCER_PROMOTION = {"earn_points_per_unit": "2", "issue_price_per_point": "0.0095"}

#: What happens to a hold: captured in full, in part, voided, or left to expire.
HOLD_OUTCOMES = (("capture", 55), ("capture_part", 15), ("void", 15), ("expire", 15))

#: The traffic mix: operation and weight.
TRAFFIC = (
    ("earn", 3000),
    ("burn_points", 110),
    ("burn_amount", 70),
    ("hold", 60),
    ("reverse_earn", 22),
    ("reverse_burn", 20),
    ("partner_bonus", 20),
    ("coalition_bonus", 10),
)

#: How likely a member shops at each partner that takes purchases.
AFFINITY = {"grocer": 0.9, "airline": 0.3, "fuel": 0.6, "books": 0.45}
#: Partner-funded promotions: (partner, points, reason).
PARTNER_BONUSES = (
    ("airline", 500, "welcome aboard: first flight with the coalition card"),
    ("fuel", 100, "car-wash week"),
    ("grocer", 200, "weekly coupon redeemed"),
    ("books", 150, "book club sign-up"),
)
#: The operator's own bonuses, in points, by reason.
COALITION_BONUSES = {"sign-up": 50, "referral": 100, "newsletter": 25}
