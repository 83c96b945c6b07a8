"""The demo's questions: checkable answers over a range of difficulty, split into pair and held-out sets.

Six tasks: arithmetic with one-, two- and three-digit operands (`arith-1`, `arith-2`, `arith-3`), unit
conversions (`conversion`), capitals (`capital`) and counts (`count`). Every question is distinct; the
held-out eval questions never appear among the pairs' questions, not even as a commutative twin ("What is 5
plus 3?" against "What is 3 plus 5?"), and both sets draw the same task mix.
"""

from __future__ import annotations

import random
import re

# One instruction on every prompt: short replies are cheap to sample on a CPU and rarely hit the cap.
STYLE = " Reply with one short sentence."

# (task, questions for pairs, questions held out for evaluation)
TASK_MIX = (("arith-1", 110, 27), ("arith-2", 110, 27), ("arith-3", 80, 21), ("conversion", 110, 27),
            ("capital", 40, 12), ("count", 25, 6))

# Capitals without a common alternative spelling or a second capital, so naming the city is the answer.
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Canada": "Ottawa", "Australia": "Canberra",
    "Egypt": "Cairo", "Kenya": "Nairobi", "Brazil": "Brasilia", "Argentina": "Buenos Aires",
    "Mexico": "Mexico City", "Peru": "Lima", "Chile": "Santiago", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw", "Greece": "Athens", "Turkey": "Ankara",
    "Ireland": "Dublin", "Austria": "Vienna", "Hungary": "Budapest", "Belgium": "Brussels",
    "Thailand": "Bangkok", "Vietnam": "Hanoi", "South Korea": "Seoul", "Indonesia": "Jakarta", "Iran": "Tehran",
    "Cuba": "Havana", "Colombia": "Bogota", "Philippines": "Manila", "the Czech Republic": "Prague",
    "Romania": "Bucharest", "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb",
    "Iceland": "Reykjavik", "Ethiopia": "Addis Ababa", "Ghana": "Accra", "Morocco": "Rabat",
    "Saudi Arabia": "Riyadh", "Iraq": "Baghdad", "Afghanistan": "Kabul", "Venezuela": "Caracas",
    "Uruguay": "Montevideo", "Nepal": "Kathmandu", "Malaysia": "Kuala Lumpur",
}
COUNTS = [
    ("How many legs does a spider have?", 8), ("How many legs does an insect have?", 6),
    ("How many days are in a week?", 7), ("How many continents are there?", 7),
    ("How many sides does a hexagon have?", 6), ("How many sides does a triangle have?", 3),
    ("How many sides does a square have?", 4), ("How many sides does an octagon have?", 8),
    ("How many sides does a pentagon have?", 5), ("How many sides does a decagon have?", 10),
    ("How many months are in a year?", 12), ("How many hours are in a day?", 24),
    ("How many minutes are in an hour?", 60), ("How many days are in a leap year?", 366),
    ("How many planets are in the solar system?", 8), ("How many strings does a standard guitar have?", 6),
    ("How many players does a soccer team have on the field?", 11),
    ("How many letters are in the English alphabet?", 26), ("How many legs does a dog have?", 4),
    ("How many arms does an octopus have?", 8), ("How many colors are in a rainbow?", 7),
    ("How many players does a basketball team have on the court?", 5),
    ("How many cards are in a standard deck, without jokers?", 52), ("How many weeks are in a year?", 52),
    ("What is the freezing point of water in degrees Celsius?", 0),
    ("What is the boiling point of water in degrees Celsius?", 100),
    ("How many keys does a standard piano have?", 88), ("How many days are in February in a non-leap year?", 28),
    ("How many wheels does a tricycle have?", 3), ("How many wheels does a bicycle have?", 2),
    ("How many degrees are in a right angle?", 90),
]
# (unit asked for, unit given, factor)
CONVERSIONS = [
    ("meters", "kilometers", 1000), ("centimeters", "meters", 100), ("millimeters", "centimeters", 10),
    ("grams", "kilograms", 1000), ("minutes", "hours", 60), ("seconds", "minutes", 60), ("hours", "days", 24),
    ("days", "weeks", 7), ("milliliters", "liters", 1000), ("months", "years", 12), ("eggs", "dozen eggs", 12),
]


def _arithmetic(task: str, rng: random.Random, n: int) -> list[tuple[str, int]]:
    """n distinct questions: +, - (never negative) and x; x pairs a multi-digit number with a one-digit one,
    which keeps it within the model's occasional reach."""
    lo, hi = {"arith-1": (1, 9), "arith-2": (10, 99), "arith-3": (100, 999)}[task]
    ops = ("+", "-", "x") if task != "arith-3" else ("+", "-")
    seen: dict[str, int] = {}
    while len(seen) < n:
        op, a, b = rng.choice(ops), rng.randint(lo, hi), rng.randint(lo, hi)
        if op == "-":
            a, b = max(a, b), min(a, b)
        if op == "x" and task != "arith-1":
            b = rng.randint(2, 9)
        word, value = {"+": ("plus", a + b), "-": ("minus", a - b), "x": ("times", a * b)}[op]
        seen.setdefault(f"What is {a} {word} {b}?", value)
    return list(seen.items())


def _pool(task: str, rng: random.Random, n: int) -> list[tuple[str, str]]:
    """n distinct questions of a task, with their reference answers, in a seeded order."""
    if task.startswith("arith-"):
        items = _arithmetic(task, rng, n)
    elif task == "conversion":
        items = rng.sample([(f"How many {to} are in {k} {given}?", k * factor)
                            for to, given, factor in CONVERSIONS for k in range(2, 16)], n)
    elif task == "capital":
        items = rng.sample([(f"What is the capital of {country}?", city) for country, city in CAPITALS.items()], n)
    elif task == "count":
        items = rng.sample(COUNTS, n)
    else:
        raise ValueError(f"unknown demo task {task!r}")
    return [(question, str(answer)) for question, answer in items]


_COMMUTATIVE = re.compile(r"What is (\d+) (plus|times) (\d+)\?")


def question_key(prompt: str) -> str:
    """The identity of a question up to commutativity: "What is 5 plus 3?" and "What is 3 plus 5?" share one
    key (plus and times, sorted operands); any other question is its own text."""
    match = _COMMUTATIVE.match(prompt)
    if not match:
        return prompt
    a, op, b = match.groups()
    return f"{op}:{min(int(a), int(b))}:{max(int(a), int(b))}"


def demo_questions(seed: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(questions for the pairs, held-out questions for evaluation): disjoint up to `question_key`, same task
    mix, seeded. A held-out question whose key a pair question has is dropped, not redrawn, so the pairs'
    questions (and their cached samples) never depend on the held-out set."""
    rng = random.Random(seed)
    train: list[dict[str, str]] = []
    held_out: list[dict[str, str]] = []
    for task, n_train, n_eval in TASK_MIX:
        picked = _pool(task, rng, n_train + n_eval)
        rows = [{"task": task, "prompt": question + STYLE, "answer": answer} for question, answer in picked]
        train += rows[:n_train]
        held_out += rows[n_train:]
    taken = {question_key(row["prompt"]) for row in train}
    held_out = [row for row in held_out if question_key(row["prompt"]) not in taken]
    for index, row in enumerate(held_out):
        row["id"] = f"{row['task']}-{index:03d}"
    return train, held_out
