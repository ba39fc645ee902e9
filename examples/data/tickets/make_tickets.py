"""Writes train.csv and eval.csv: short customer-support tickets in four classes.

Written for Fermion's fine-tuning example; deterministic (seeded), so re-running it
reproduces the shipped files byte for byte. Eval sentences use held-out phrasings.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

SUBJECTS = {
    "billing": ["my invoice", "the last charge", "my subscription fee", "the refund", "my credit card payment",
                "the annual plan price", "a duplicate charge", "the VAT on my bill", "my receipt", "the promo code discount"],
    "technical": ["the app", "the login page", "the API", "the mobile client", "the dashboard", "the export feature",
                  "the sync service", "the search box", "the upload button", "the notification emails"],
    "shipping": ["my parcel", "the delivery", "my order", "the package", "the courier", "the tracking number",
                 "the shipment to Berlin", "the replacement item", "the return label", "the express delivery"],
    "account": ["my password", "my username", "my profile", "two-factor authentication", "my email address",
                "my account", "the team invitation", "my security settings", "account deletion", "my user role"],
}
PROBLEMS = {
    "billing": ["was charged twice", "shows the wrong amount", "was not refunded yet", "is higher than promised",
                "failed to go through", "needs a corrected invoice", "was billed after I cancelled"],
    "technical": ["crashes on start", "returns error 500", "is extremely slow today", "shows a blank screen",
                  "keeps timing out", "does not load at all", "throws an exception when I click save"],
    "shipping": ["has not arrived", "was delivered to the wrong address", "arrived damaged", "is stuck in customs",
                 "shows no tracking updates", "is two weeks late", "was left at the wrong door"],
    "account": ["cannot be reset", "was locked after three attempts", "needs to be changed", "is not recognised",
                "was hacked I think", "does not accept my new phone", "should be removed with all my data"],
}
OPENERS = ["Hi,", "Hello team,", "Urgent:", "Please help,", "Good morning.", "", "Hey there,", "Dear support,"]
CLOSERS = ["Thanks.", "What should I do?", "Please fix this.", "Can you check?", "", "Regards.", "Any update?"]
EVAL_OPENERS = ["To whom it may concern,", "Quick question:", "Sorry to bother you,"]
EVAL_CLOSERS = ["I need this sorted today.", "Looking forward to your reply.", "Cheers."]


def ticket(rng: random.Random, label: str, openers: list[str], closers: list[str]) -> str:
    text = f"{rng.choice(openers)} {rng.choice(SUBJECTS[label])} {rng.choice(PROBLEMS[label])}. {rng.choice(closers)}"
    return " ".join(text.split())


def main() -> None:
    rng = random.Random(1234)
    here = Path(__file__).parent
    for name, count, openers, closers in (("train", 60, OPENERS, CLOSERS), ("eval", 20, EVAL_OPENERS, EVAL_CLOSERS)):
        rows = [(ticket(rng, label, openers, closers), label) for label in SUBJECTS for _ in range(count)]
        rng.shuffle(rows)
        with (here / f"{name}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)


if __name__ == "__main__":
    main()
