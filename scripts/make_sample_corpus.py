#!/usr/bin/env python3
"""Generate the small sample corpus in data/sample/ from templates.

The corpus is tokenized like the Penn Treebank language-modeling data: lowercase
words separated by single spaces, one sentence per line, every number written
as N, no punctuation, possessive 's and n't split off as words, and a few words
replaced by <unk>. Its vocabulary is small (about 430 words) so that a tiny
model learns it in seconds.

The output depends only on SEED, so rerunning this script reproduces the
committed files byte for byte. Every word of valid.txt and test.txt also occurs
in train.txt.

Usage: make_sample_corpus.py [--out DIR] [--train-lines N] [--eval-lines N]
"""

import argparse
import os
import random
import sys

SEED = 20240521

NAMES = [
    "anna", "ben", "clara", "david", "emma", "frank", "grace", "henry",
    "iris", "jack", "laura", "martin", "nina", "oscar", "paul", "rosa",
    "sam", "tom", "vera", "walter",
]
TOWNS = [
    "millbrook", "ashford", "riverton", "oakdale", "fairview", "lakeside",
    "stonebridge", "greenfield", "northwood", "westport",
]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONTHS = ["january", "march", "april", "june", "july", "october", "december"]
TIMES_OF_DAY = ["morning", "afternoon", "evening", "night"]

WEATHER_ADJECTIVES = [
    "sunny", "cloudy", "rainy", "windy", "foggy", "cold", "warm", "hot",
    "mild", "wet", "dry", "grey", "bright", "stormy", "snowy", "cool",
]
WEATHER_NOUNS = ["rain", "snow", "wind", "fog", "sun", "storm", "frost", "hail", "thunder"]
WEATHER_VERBS_PAST = ["rained", "snowed", "poured"]
SKY_PHRASES = ["clear", "dark", "blue", "heavy"]

INGREDIENTS = [
    "flour", "sugar", "butter", "salt", "milk", "eggs", "rice", "onions",
    "garlic", "carrots", "potatoes", "tomatoes", "cheese", "honey", "pepper",
    "apples", "lemons", "beans", "mushrooms", "oil", "cream", "herbs",
]
DISHES = [
    "soup", "bread", "cake", "pie", "stew", "salad", "pasta", "curry",
    "omelette", "pancakes", "porridge", "sauce", "cookies", "pizza",
]
MEALS = ["breakfast", "lunch", "dinner", "supper"]
UNITS = ["cups", "spoons", "grams", "slices", "pieces"]
COOKING_VERBS_PAST = ["cooked", "baked", "made", "prepared", "served"]
COOKING_STEPS = ["stir", "chop", "mix", "boil", "slice", "fry", "heat", "pour", "add"]
TASTE_ADJECTIVES = ["sweet", "salty", "spicy", "fresh", "delicious", "soft", "crisp", "rich"]

ANIMALS = [
    "dog", "cat", "horse", "cow", "sheep", "goat", "duck", "fox", "rabbit",
    "owl", "mouse", "deer", "pig", "hen", "frog", "bear",
]
ANIMAL_PLURALS = {
    "dog": "dogs", "cat": "cats", "horse": "horses", "cow": "cows",
    "sheep": "sheep", "goat": "goats", "duck": "ducks", "fox": "foxes",
    "rabbit": "rabbits", "owl": "owls", "mouse": "mice", "deer": "deer",
    "pig": "pigs", "hen": "hens", "frog": "frogs", "bear": "bears",
}
ANIMAL_ADJECTIVES = ["small", "old", "young", "brown", "white", "black", "quiet", "hungry", "lazy", "clever"]
ANIMAL_VERBS_PAST = ["slept", "ran", "played", "waited", "hid", "ate", "rested", "walked"]
ANIMAL_ABILITIES = ["swim", "climb", "jump", "fly", "dig", "run fast", "see at night"]
HABITATS = ["field", "barn", "forest", "garden", "river", "meadow", "yard", "hills", "pond"]
PET_PLACES = ["door", "window", "fire", "stairs", "sofa", "table", "bed", "gate"]

TRAIN_KINDS = ["early", "late", "fast", "slow", "local", "express", "night", "morning"]
DELAY_REASONS = [
    "the snow", "the storm", "a broken signal", "a fallen tree",
    "works on the line", "a late crew", "heavy fog", "a power cut",
]
TRAIN_PARTS = ["carriages", "seats", "doors", "windows", "wheels"]
STATION_STAFF = ["driver", "conductor", "guard", "station master"]

SHOPS = [
    "bakery", "library", "post office", "pharmacy", "market", "cafe",
    "butcher", "bookshop", "bank", "hardware store", "school", "hospital",
]
STREETS = ["main", "church", "mill", "station", "park", "high", "bridge", "market"]
LANDMARKS = ["church", "bridge", "park", "town hall", "old mill", "square", "museum", "harbor"]
JOBS = ["teacher", "baker", "doctor", "farmer", "driver", "nurse", "clerk", "painter", "mayor", "cook"]
ISSUES = [
    "new road", "school budget", "parking rules", "summer fair",
    "water prices", "bus timetable", "bridge repairs", "town festival",
]
OPENING_WORDS = ["opens", "closes"]
FAMILY = ["sister", "brother", "mother", "father", "uncle", "aunt", "friend", "neighbor"]
FEELINGS = ["happy", "tired", "surprised", "worried", "pleased", "busy"]


PLURAL_DISHES = {"pancakes", "cookies"}
VOWELS = "aeiou"


def pick(rng, items):
    return rng.choice(items)


def with_article(phrase):
    """Prefix phrase with "a" or "an" by its first letter."""
    return ("an " if phrase[0] in VOWELS else "a ") + phrase


def was_or_were(dish):
    return "were" if dish in PLURAL_DISHES else "was"


def weather_sentence(rng):
    town, day = pick(rng, TOWNS), pick(rng, DAYS)
    adjective, other = rng.sample(WEATHER_ADJECTIVES, 2)
    templates = [
        f"the weather in {town} was {adjective} on {day}",
        f"the weather in {town} was {adjective} and {other} all {pick(rng, TIMES_OF_DAY)}",
        f"it {pick(rng, WEATHER_VERBS_PAST)} for N hours in {town} on {day} {pick(rng, TIMES_OF_DAY)}",
        f"the forecast says it will be {adjective} and {other} on {day}",
        f"the forecast for {town} says {pick(rng, WEATHER_NOUNS)} in the {pick(rng, TIMES_OF_DAY)} and {pick(rng, WEATHER_NOUNS)} at night",
        f"temperatures reached N degrees in {town} in {pick(rng, MONTHS)}",
        f"the temperature fell to N degrees on {day} night",
        f"the sky was {pick(rng, SKY_PHRASES)} over {town} and the air was {adjective}",
        f"there was a lot of {pick(rng, WEATHER_NOUNS)} in {pick(rng, MONTHS)} this year",
        f"{pick(rng, NAMES)} said the {pick(rng, WEATHER_NOUNS)} would stop by the {pick(rng, TIMES_OF_DAY)}",
        f"it is usually {adjective} in {town} in {pick(rng, MONTHS)} but this year it was {other}",
        f"N millimeters of rain fell in {town} on {day}",
        f"the {pick(rng, WEATHER_NOUNS)} did n't stop until {day} {pick(rng, TIMES_OF_DAY)}",
    ]
    return pick(rng, templates)


def cooking_sentence(rng):
    name = pick(rng, NAMES)
    first, second = rng.sample(INGREDIENTS, 2)
    dish, other_dish = rng.sample(DISHES, 2)
    step, other_step = rng.sample(COOKING_STEPS, 2)
    templates = [
        f"{name} {pick(rng, COOKING_VERBS_PAST)} {dish} with {first} and {second} for {pick(rng, MEALS)}",
        f"to make {dish} you need N {pick(rng, UNITS)} of {first} and some {second}",
        f"the {dish} should bake for N minutes in a hot oven",
        f"{name} likes {dish} but does n't like {other_dish}",
        f"first {step} the {first} then {other_step} the {second}",
        f"{step} the {first} for N minutes and {other_step} in the {second}",
        f"the {dish} {was_or_were(dish)} {pick(rng, TASTE_ADJECTIVES)} and the {other_dish} {was_or_were(other_dish)} {pick(rng, TASTE_ADJECTIVES)}",
        f"{name} 's {pick(rng, FAMILY)} {pick(rng, COOKING_VERBS_PAST)} some {pick(rng, TASTE_ADJECTIVES)} {dish} on {pick(rng, DAYS)}",
        f"we had {dish} and {other_dish} for {pick(rng, MEALS)} on {pick(rng, DAYS)}",
        f"the recipe uses N {pick(rng, UNITS)} of {first} and N {pick(rng, UNITS)} of {second}",
        f"{name} bought {first} and {second} at the market in {pick(rng, TOWNS)}",
        f"we have no {first} left so we can not make {dish} today",
    ]
    return pick(rng, templates)


def animal_sentence(rng):
    animal, other = rng.sample(ANIMALS, 2)
    name = pick(rng, NAMES)
    templates = [
        f"the {pick(rng, ANIMAL_ADJECTIVES)} {animal} {pick(rng, ANIMAL_VERBS_PAST)} in the {pick(rng, HABITATS)}",
        f"{with_article(animal)} can {pick(rng, ANIMAL_ABILITIES)} but {with_article(other)} can not",
        f"{name} 's {animal} sleeps near the {pick(rng, PET_PLACES)} every {pick(rng, TIMES_OF_DAY)}",
        f"there are N {ANIMAL_PLURALS[animal]} and N {ANIMAL_PLURALS[other]} on the farm near {pick(rng, TOWNS)}",
        f"the {ANIMAL_PLURALS[animal]} {pick(rng, ANIMAL_VERBS_PAST)} in the {pick(rng, HABITATS)} when it was {pick(rng, WEATHER_ADJECTIVES)}",
        f"{name} saw {with_article(pick(rng, ANIMAL_ADJECTIVES))} {animal} near the {pick(rng, HABITATS)} on {pick(rng, DAYS)}",
        f"the {animal} was {pick(rng, ANIMAL_ADJECTIVES)} and the {other} was {pick(rng, ANIMAL_ADJECTIVES)}",
        f"{ANIMAL_PLURALS[animal]} do n't like the {pick(rng, WEATHER_NOUNS)} so they stay in the {pick(rng, HABITATS)}",
        f"the farmer feeds the {ANIMAL_PLURALS[animal]} at N in the {pick(rng, TIMES_OF_DAY)}",
        f"{with_article(animal)} lives for about N years",
    ]
    return pick(rng, templates)


def train_sentence(rng):
    town, other_town = rng.sample(TOWNS, 2)
    templates = [
        f"the {pick(rng, TRAIN_KINDS)} train to {town} left N minutes late",
        f"the train from {town} to {other_town} stops at N stations",
        f"passengers waited on platform N because of {pick(rng, DELAY_REASONS)}",
        f"the {pick(rng, TRAIN_KINDS)} train was late because of {pick(rng, DELAY_REASONS)}",
        f"a ticket from {town} to {other_town} costs N dollars",
        f"the journey from {town} to {other_town} takes N minutes",
        f"the train has N {pick(rng, TRAIN_PARTS)} and the {pick(rng, STATION_STAFF)} is new",
        f"{pick(rng, NAMES)} takes the {pick(rng, TRAIN_KINDS)} train to work every {pick(rng, DAYS)}",
        f"the {pick(rng, STATION_STAFF)} said the train to {town} would leave from platform N",
        f"on {pick(rng, DAYS)} the trains to {town} did n't run because of {pick(rng, DELAY_REASONS)}",
        f"the station in {town} has N platforms and a small cafe",
        f"the {pick(rng, TRAIN_KINDS)} train arrives in {town} at N in the {pick(rng, TIMES_OF_DAY)}",
    ]
    return pick(rng, templates)


def town_sentence(rng):
    name, other_name = rng.sample(NAMES, 2)
    town = pick(rng, TOWNS)
    shop = pick(rng, SHOPS)
    templates = [
        f"the {shop} on {pick(rng, STREETS)} street {pick(rng, OPENING_WORDS)} at N in the {pick(rng, TIMES_OF_DAY)}",
        f"{name} works as a {pick(rng, JOBS)} at the {shop} near the {pick(rng, LANDMARKS)}",
        f"the town council met on {day_phrase(rng)} to discuss the {pick(rng, ISSUES)}",
        f"about N people live in {town}",
        f"the {pick(rng, LANDMARKS)} in {town} is N years old",
        f"{name} met {other_name} at the {shop} on {pick(rng, DAYS)}",
        f"the mayor of {town} said the {pick(rng, ISSUES)} would cost N dollars",
        f"{name} 's {pick(rng, FAMILY)} is a {pick(rng, JOBS)} in {town}",
        f"{name} was {pick(rng, FEELINGS)} because the {shop} was closed",
        f"the new {shop} in {town} will open in {pick(rng, MONTHS)}",
        f"N children go to the school on {pick(rng, STREETS)} street",
        f"{name} walked from the {pick(rng, LANDMARKS)} to the {shop} in N minutes",
        f"the {pick(rng, ISSUES)} was the main topic at the meeting in {town}",
    ]
    return pick(rng, templates)


def day_phrase(rng):
    return pick(rng, DAYS) + " " + pick(rng, TIMES_OF_DAY)


TOPICS = [weather_sentence, cooking_sentence, animal_sentence, train_sentence, town_sentence]
JOINED_SENTENCE_PROBABILITY = 0.33
CONTENT_WORDS = set(NAMES + TOWNS + INGREDIENTS + DISHES + ANIMALS + JOBS)


def make_sentence(rng):
    """Draw one sentence, or two on the same topic joined by "and".

    Joining raises the mean length to about 14 words (the PTB averages 21).
    """
    topic = pick(rng, TOPICS)
    sentence = topic(rng)
    if rng.random() < JOINED_SENTENCE_PROBABILITY:
        sentence += " and " + topic(rng)
    return sentence


def replace_with_unk(rng, line):
    """Replace one content word (a name, town, food, animal or job) with <unk>.

    The PTB likewise maps rare words, mostly nouns, to <unk>. A line without a
    content word gets its first word replaced.
    """
    words = line.split()
    positions = [i for i, word in enumerate(words) if word in CONTENT_WORDS] or [0]
    words[pick(rng, positions)] = "<unk>"
    return " ".join(words)


def make_split(rng, line_count, unk_count, allowed_words=None):
    """Generate line_count lines, unk_count of them with one <unk>.

    With allowed_words, lines that contain any other word are drawn again.
    """
    lines = []
    while len(lines) < line_count:
        line = make_sentence(rng)
        if allowed_words is not None and not set(line.split()) <= allowed_words:
            continue
        lines.append(line)
    for index in rng.sample(range(line_count), unk_count):
        lines[index] = replace_with_unk(rng, lines[index])
    return lines


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8", newline="\n") as output:
        for line in lines:
            output.write(line + "\n")


def main():
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "sample")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=default_out, help="output folder (default: data/sample of the repo)")
    parser.add_argument("--train-lines", type=int, default=1500, help="lines in train.txt (default 1500)")
    parser.add_argument("--eval-lines", type=int, default=150, help="lines in valid.txt and in test.txt (default 150)")
    args = parser.parse_args()
    if args.train_lines < 20 or args.eval_lines < 10:
        sys.exit("error: --train-lines must be at least 20 and --eval-lines at least 10")

    rng = random.Random(SEED)
    train = make_split(rng, args.train_lines, max(3, args.train_lines // 100))
    train_words = {word for line in train for word in line.split()}
    valid = make_split(rng, args.eval_lines, max(2, args.eval_lines // 50), train_words)
    test = make_split(rng, args.eval_lines, max(2, args.eval_lines // 50), train_words)

    os.makedirs(args.out, exist_ok=True)
    for name, lines in (("train.txt", train), ("valid.txt", valid), ("test.txt", test)):
        write_lines(os.path.join(args.out, name), lines)
        token_count = sum(len(line.split()) for line in lines)
        print(f"{name}: {len(lines)} lines, {token_count} tokens")
    print(f"vocabulary of train.txt: {len(train_words)} words (without <eos>)")


if __name__ == "__main__":
    main()
