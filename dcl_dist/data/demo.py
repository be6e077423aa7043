"""Deterministic generator of the synthetic, imbalanced banking-support intent dataset used by the offline quickstart.

Run ``python -m dcl_dist.data.demo --out examples/demo [--seed 13]`` to write ``train.jsonl``, ``test.jsonl`` and
``labels.json``. The same seed always writes byte-identical files.

Templates use two kinds of placeholders: ``{slot}`` is filled from :data:`SLOTS` (amounts are generated), and
``[a|b|c]`` picks one inline synonym (an empty option makes the words optional). Every class also has a few
near-ambiguous templates that borrow the wording of another class, and a few held-out paraphrases that appear only in
the test split, so that neither a bag-of-words model nor a fine-tuned encoder scores 100%.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SEED = 13
TEST_PER_CLASS = 40
HELD_OUT_PER_CLASS = 10  # test texts per class drawn from the held-out paraphrases
AMBIGUOUS_SHARE = 0.2  # share of the other texts drawn from the ambiguous templates
MIN_WORDS = 4
MAX_WORDS = 30


@dataclass(frozen=True)
class IntentClass:
    """One intent: its label, how many train texts it gets, and its templates.

    ``ambiguous`` templates mirror the wording of another class; ``held_out`` ones are paraphrases used only in the
    test split, so the test measures unseen phrasings and not only memorised templates.
    """

    name: str
    train_count: int
    templates: tuple[str, ...]
    ambiguous: tuple[str, ...]
    held_out: tuple[str, ...]


SLOTS: dict[str, tuple[str, ...]] = {
    "card": ("card", "debit card", "credit card", "bank card", "Visa card", "Mastercard", "contactless card"),
    "merchant": (
        "Amazon",
        "Tesco",
        "Uber",
        "Netflix",
        "Spotify",
        "IKEA",
        "Lidl",
        "Starbucks",
        "eBay",
        "Zara",
        "Booking.com",
        "the petrol station",
        "the supermarket",
        "a hotel",
        "the pharmacy",
        "Ryanair",
        "Deliveroo",
        "Café Nero",
        "Primark",
        "an online shop",
    ),
    "name": (
        "my landlord",
        "my sister",
        "my brother",
        "my mum",
        "a friend",
        "John",
        "María",
        "Chloé",
        "Ahmed",
        "Wei",
        "my flatmate",
        "a supplier",
        "my savings account",
        "the plumber",
        "Zoë",
        "my son",
    ),
    "time": (
        "yesterday",
        "this morning",
        "last night",
        "today",
        "on Monday",
        "on Friday",
        "an hour ago",
        "two days ago",
        "last weekend",
        "earlier today",
        "at lunchtime",
    ),
    "place": (
        "at the airport",
        "on the train",
        "in a taxi",
        "at the gym",
        "on the bus",
        "at a bar",
        "in the shopping centre",
        "at the station",
        "on holiday",
        "at work",
        "at the cinema",
    ),
    "app": ("the app", "the mobile app", "online banking", "the banking app", "your app"),
    "device": ("my phone", "my new phone", "my iPhone", "my Android phone", "my tablet", "my laptop", "a new Samsung"),
    "days": ("3 days", "5 days", "a week", "over a week", "two weeks", "10 days", "almost a month", "several days"),
}

CLASSES: tuple[IntentClass, ...] = (
    IntentClass(
        name="card_lost",
        train_count=300,
        templates=(
            "I [lost|misplaced] my {card} {time}, please block it.",
            "My {card} was stolen {place}.",
            "I can't find my {card} anywhere, what should I do?",
            "Someone [stole|took] my wallet {place} and my {card} was in it.",
            "How do I freeze my {card}? I think I dropped it {place}.",
            "Please cancel my {card}, it's gone missing.",
            "I left my {card} {place} {time} and now it's gone.",
            "My {card} is missing and I need a replacement.",
            "Can you send me a new {card}? The old one was [stolen|lost].",
            "I think my {card} fell out of my pocket {place}.",
            "Lost my {card}. How do I report it?",
            "I need to report a stolen {card} [right away|urgently|immediately].",
            "My bag was [taken|snatched] {place} with my {card} inside, please block the card.",
            "I misplaced my {card}, can I temporarily lock it in {app}?",
            "How long does a replacement card take to arrive after I report it [lost|stolen]?",
            "my {card} is lost, block it asap",
            "I can't remember where I put my {card}, should I freeze it?",
            "The ATM [at the station|at the airport|near my office] [kept|swallowed] my {card} and never gave it back.",
            "I have no idea where my {card} is, can you [stop|cancel] it so nobody can use it?",
            "[Pickpocketed|Robbed] {place}, my {card} is gone.",
        ),
        ambiguous=(
            "Can you block my {card}? I don't want any [payments|transactions] going through.",
            "My {card} has been blocked and I don't have it with me anymore.",
            "Someone made a payment of {amount} at {merchant} with my card, I don't have it anymore.",
        ),
        held_out=(
            "My {card} has vanished, I've searched everywhere.",
            "I think a pickpocket got my purse {place}, the card was inside.",
            "Where do I go to say my {card} is no longer in my possession?",
            "Please deactivate my plastic, I've no clue where it ended up.",
        ),
    ),
    IntentClass(
        name="transfer_failed",
        train_count=170,
        templates=(
            "My transfer of {amount} to {name} failed.",
            "I tried to send {amount} to {name} {time} but it didn't go through.",
            "Why was my bank transfer to {name} [rejected|refused]?",
            "The money I sent to {name} {time} bounced back to my account.",
            "Transfer failed with an error in {app}, what's wrong?",
            "{name} still hasn't received the {amount} I transferred {time}.",
            "I keep getting 'transfer unsuccessful' when sending money to {name}.",
            "My transfer to {name} shows as failed but the {amount} left my account.",
            "Can't send money to {name}, the transfer just keeps failing.",
            "Why did my international transfer to {name} get cancelled?",
            "I made a transfer to {name} {time} and now it says returned.",
            "The [wire|bank] transfer of {amount} didn't arrive, {name} says nothing came in.",
            "Sending {amount} to {name} failed twice, is there a limit?",
            "My standing order to {name} didn't go out this month.",
            "transfer to {name} stuck on pending then failed",
            "I entered the account number for {name} and the transfer was declined.",
            "Bank transfer error: {amount} to {name} could not be completed.",
            "Why won't {app} let me transfer {amount} to {name}?",
        ),
        ambiguous=(
            "My payment of {amount} to {name} was declined, why?",
            "The money I sent {time} came back to my account, is that a refund?",
            "Payment to {name} didn't go through but the money left my account.",
        ),
        held_out=(
            "The money I wired to {name} never landed.",
            "Outgoing payment to {name} reversed, what happened?",
            "My {amount} remittance to {name} didn't complete.",
            "Moving money to {name} is impossible, it errors every time.",
        ),
    ),
    IntentClass(
        name="payment_declined",
        train_count=95,
        templates=(
            "My {card} was declined at {merchant} {time}.",
            "Why does my {card} keep getting declined when I pay at {merchant}?",
            "Tried to pay {amount} at {merchant} and the payment was [refused|rejected].",
            "Card payment rejected online at {merchant}, but I have enough money.",
            "My {card} doesn't work in shops anymore, every payment fails.",
            "Contactless payment declined {place}, what's going on?",
            "I was embarrassed at {merchant} because my {card} got declined.",
            "Why was my {amount} purchase at {merchant} declined?",
            "The card machine at {merchant} said declined even though my balance is fine.",
            "My online payment to {merchant} keeps failing with my {card}.",
            "{merchant} won't accept my {card}, it says transaction declined.",
            "Payment declined when I tried to use [Apple Pay|Google Pay] at {merchant}.",
            "card declined again at {merchant}, third time this week",
            "Why can't I pay with my {card} abroad? It's declined everywhere.",
            "My {card} was refused at the checkout for {amount}.",
            "Is there a spending limit on my card? A {amount} payment at {merchant} was declined.",
        ),
        ambiguous=(
            "My payment of {amount} to {merchant} didn't go through.",
            "The {amount} payment failed but the money [left|came out of] my account.",
            "My {card} is not working, is it blocked?",
        ),
        held_out=(
            "The till at {merchant} wouldn't take my {card}.",
            "The shop said my card was no good when I bought something for {amount}.",
            "My purchase at {merchant} bounced, though there's money in the account.",
            "Tapping my card at {merchant} just beeps and says not authorised.",
        ),
    ),
    IntentClass(
        name="refund_pending",
        train_count=55,
        templates=(
            "{merchant} refunded me {amount} {time} but it's not in my account yet.",
            "Where is my refund from {merchant}?",
            "I returned an item to {merchant} {days} ago and still no refund.",
            "How long does a refund take to show up on my {card}?",
            "The merchant says the refund was sent but I can't see it.",
            "Still waiting for my {amount} refund from {merchant}.",
            "My refund from {merchant} has been pending for {days}.",
            "{merchant} issued a refund of {amount}, when will I get the money back?",
            "I got a refund confirmation email from {merchant} but nothing has arrived.",
            "refund from {merchant} not showing in {app}",
            "I cancelled my order at {merchant} and haven't been refunded yet.",
            "Can you check if a refund of {amount} from {merchant} is on its way?",
            "It's been {days} and my refund for a cancelled flight still isn't here.",
            "Why is my refund taking so long? {merchant} said {days} ago it was processed.",
            "The refund for my returned purchase hasn't been credited to my account.",
            "I was charged twice at {merchant}, they promised to refund one but I'm still waiting.",
        ),
        ambiguous=(
            "The {amount} from {merchant} still hasn't come back to my account.",
            "My money hasn't come back after the payment at {merchant} failed.",
            "{name} sent the money back {time} but it's not in my account.",
        ),
        held_out=(
            "{merchant} says they reimbursed me {days} ago, where's the money?",
            "I sent back my order and the money hasn't returned yet.",
            "Still no reimbursement for the {amount} item I returned.",
            "When does money from a returned purchase come back?",
        ),
    ),
    IntentClass(
        name="app_login_issue",
        train_count=30,
        templates=(
            "I can't log in to {app} on {device}.",
            "{app} keeps saying my password is wrong.",
            "Locked out of my account after too many login attempts.",
            "The app crashes every time I try to sign in.",
            "I forgot my password for {app}, how do I reset it?",
            "I'm not getting the verification code to log in.",
            "Face ID login stopped working on {device}.",
            "I switched to {device} and now I can't access my account in {app}.",
            "login fails with an error since the last update",
            "Can't get past the login screen in {app}.",
            "My online banking account is locked, how do I get back in?",
            "The one-time passcode for signing in never arrives.",
            "Why does {app} log me out [right after|immediately after] I sign in?",
            "I entered my passcode wrong and now {app} won't let me in.",
            "How do I register {device} so I can log in?",
            "{app} says my session expired every time I open it.",
        ),
        ambiguous=(
            "I entered the wrong code three times and now my account is blocked.",
            "I can't make any transfers because {app} won't let me in.",
            "My passcode is locked, how do I unlock it?",
        ),
        held_out=(
            "I can't get into my account on {device}.",
            "The sign-on page rejects my credentials.",
            "After updating {device}, {app} won't open my profile.",
            "My fingerprint doesn't let me into {app} anymore.",
        ),
    ),
    IntentClass(
        name="pin_blocked",
        train_count=18,
        templates=(
            "My PIN is blocked after three wrong attempts.",
            "I entered the wrong PIN at the ATM and now my PIN is locked.",
            "How do I unblock my PIN?",
            "I forgot my card PIN, how can I reset it?",
            "The cash machine says my PIN is blocked.",
            "Can I unlock my PIN in {app}?",
            "pin locked, can't withdraw cash",
            "I typed my PIN wrong too many times {place}.",
            "Where can I see my PIN? I forgot it.",
            "My new {card} PIN doesn't work, it says incorrect PIN.",
            "How do I change my PIN? It got blocked.",
            "I need to reset my PIN, it's been locked since {time}.",
            "The shop terminal said PIN tries exceeded.",
            "I got my PIN wrong and now chip and PIN payments fail.",
            "Can you unblock the PIN on my {card}?",
        ),
        ambiguous=(
            "My {card} has been blocked, how do I get it working again?",
            "Can you unblock my {card}? I can't pay at {merchant}.",
            "I can't log in or use my card, the code is locked.",
        ),
        held_out=(
            "The cash machine won't accept my secret number anymore.",
            "Too many wrong guesses of my four-digit code, now it's frozen.",
            "I keep typing the wrong number at the ATM and now it's disabled.",
            "How do I get my PIN working again after the lockout?",
        ),
    ),
)

PREFIXES: tuple[str, ...] = (
    "Hi,",
    "Hello,",
    "Hey,",
    "Hi there,",
    "Good morning,",
    "Good evening,",
    "Excuse me,",
    "Urgent:",
    "Help!",
    "Quick question:",
    "Hello team,",
    "Hi support,",
)
CONTEXTS: tuple[str, ...] = (
    "I'm abroad at the moment.",
    "I've been a customer for years.",
    "I'm using the app on my phone.",
    "This is the second time this month.",
    "I checked my account balance and it's fine.",
    "Your chat bot couldn't help me.",
    "I'm on a business trip.",
)
SUFFIXES: tuple[str, ...] = (
    "Thanks.",
    "Thank you!",
    "Please help.",
    "Can you help?",
    "Any ideas?",
    "Thanks in advance.",
    "Please advise.",
    "Cheers",
    "This is really frustrating.",
    "I need this sorted today.",
)

_SLOT_RE = re.compile(r"\{(\w+)\}")
_CHOICE_RE = re.compile(r"\[([^\[\]]*)\]")
_I_WORD_RE = re.compile(r"^I('|$)")


def _amount(rng: random.Random) -> str:
    """A money amount in one of a few common spellings."""
    value = rng.choice((5, 12, 20, 25, 40, 50, 75, 89, 120, 150, 200, 250, 300, 450, 500, 800, 1200, 2500))
    style = rng.randrange(5)
    if style == 0:
        return f"£{value}.{rng.randrange(100):02d}"
    if style == 1:
        return f"€{value}"
    if style == 2:
        return f"${value}"
    if style == 3:
        return f"{value} euros"
    return f"£{value}"


def _render(template: str, rng: random.Random) -> str:
    """Fill the inline choices and slots of one template."""
    text = _CHOICE_RE.sub(lambda m: rng.choice(m.group(1).split("|")), template)

    def fill(match: re.Match[str]) -> str:
        slot = match.group(1)
        return _amount(rng) if slot == "amount" else rng.choice(SLOTS[slot])

    text = _SLOT_RE.sub(fill, text)
    return " ".join(text.split())


def _typo(text: str, rng: random.Random) -> str:
    """Swap, drop or double one letter in one word of at least five letters."""
    words = text.split(" ")
    candidates = [i for i, word in enumerate(words) if len(word) >= 5 and word.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    word = words[i]
    pos = rng.randrange(1, len(word) - 2)
    kind = rng.randrange(3)
    if kind == 0:
        word = word[:pos] + word[pos + 1] + word[pos] + word[pos + 2 :]
    elif kind == 1:
        word = word[:pos] + word[pos + 1 :]
    else:
        word = word[:pos] + word[pos] + word[pos:]
    words[i] = word
    return " ".join(words)


def _keeps_capital(word: str) -> bool:
    """Whether a sentence-initial word stays capitalised after a greeting such as "Hi," (I, I'm, PIN, ATM)."""
    return bool(_I_WORD_RE.match(word)) or (len(word) > 1 and word.isupper())


def _decorate(body: str, starts_with_slot: bool, rng: random.Random) -> str:
    """Add context, politeness, casual lower-casing and typos the way real support messages vary."""
    keep_case = _keeps_capital(body.split(" ", 1)[0]) or (starts_with_slot and body[0].isupper())
    text = body[0].upper() + body[1:]
    if rng.random() < 0.12:
        context = rng.choice(CONTEXTS)
        text = f"{context} {text}"
        keep_case = _keeps_capital(context.split(" ", 1)[0])
    if rng.random() < 0.3:
        prefix = rng.choice(PREFIXES)
        if prefix.endswith(",") and not keep_case:
            text = text[0].lower() + text[1:]
        text = f"{prefix} {text}"
    if rng.random() < 0.25:
        if text[-1] not in ".?!":
            text += "."
        text = f"{text} {rng.choice(SUFFIXES)}"
    if rng.random() < 0.1:
        text = text.lower().rstrip(".")
    if rng.random() < 0.12:
        text = _typo(text, rng)
    return text


def _dedupe_key(text: str) -> str:
    """Case- and punctuation-insensitive form, so near-identical texts count as duplicates."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def _draw(
    name: str,
    groups: tuple[tuple[str, ...], ...],
    weights: tuple[float, ...],
    count: int,
    seen: set[str],
    rng: random.Random,
) -> list[str]:
    """Draw ``count`` texts from weighted template groups whose dedupe keys are not yet in ``seen`` (updated)."""
    texts: list[str] = []
    attempts = 0
    while len(texts) < count:
        attempts += 1
        if attempts > 500 * count:
            raise RuntimeError(f"could not draw {count} distinct texts for {name!r}")
        template = rng.choice(rng.choices(groups, weights)[0])
        text = _decorate(_render(template, rng), template.startswith("{"), rng)
        key = _dedupe_key(text)
        if key in seen or not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            continue
        seen.add(key)
        texts.append(text)
    return texts


def build_demo_splits(seed: int = DEFAULT_SEED) -> dict[str, list[dict[str, str]]]:
    """Build the train and test records in a fixed, seed-determined order."""
    rng = random.Random(seed)
    seen: set[str] = set()
    train: list[dict[str, str]] = []
    test: list[dict[str, str]] = []
    for cls in CLASSES:
        seen_groups = (cls.templates, cls.ambiguous)
        seen_weights = (1.0 - AMBIGUOUS_SHARE, AMBIGUOUS_SHARE)
        n_seen_test = TEST_PER_CLASS - HELD_OUT_PER_CLASS
        texts = _draw(cls.name, seen_groups, seen_weights, cls.train_count + n_seen_test, seen, rng)
        texts += _draw(cls.name, (cls.held_out,), (1.0,), HELD_OUT_PER_CLASS, seen, rng)
        train += [{"text": t, "label": cls.name} for t in texts[: cls.train_count]]
        test += [{"text": t, "label": cls.name} for t in texts[cls.train_count :]]
    rng.shuffle(train)
    rng.shuffle(test)
    return {"train": train, "test": test}


def _write_jsonl(path: Path, records: list[dict[str, str]]) -> None:
    """Write one JSON object per line, UTF-8, with sorted keys and LF line ends."""
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")


def write_demo_dataset(out_dir: Path, seed: int = DEFAULT_SEED) -> dict[str, int]:
    """Write ``train.jsonl``, ``test.jsonl`` and ``labels.json`` (sorted label names) to ``out_dir``.

    Returns the number of records per split.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = build_demo_splits(seed)
    for split, records in splits.items():
        _write_jsonl(out_dir / f"{split}.jsonl", records)
    labels = sorted(cls.name for cls in CLASSES)
    (out_dir / "labels.json").write_text(json.dumps(labels, indent=2) + "\n", encoding="utf-8", newline="\n")
    return {split: len(records) for split, records in splits.items()}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Write the synthetic banking-intent demo dataset.")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    counts = write_demo_dataset(args.out, args.seed)
    print(json.dumps({"out": str(args.out), **counts}))


if __name__ == "__main__":
    main()
