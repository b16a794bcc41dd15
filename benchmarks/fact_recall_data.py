"""Facts for benchmarks/fact_recall.py: (statement, question, expected answer). Written before any tuning; the
tuning set picks the slot wording and sampling, the held-out set gives the numbers reported. Neither holds the
end-to-end test's locker code. Statements are typed the way Whisper writes speech (digits as digits).

The expected answer is matched as whole words in the normalised reply (lower case, number words as digits, runs
of digits joined, ordinals and punctuation dropped): "March 14th" matches "march 14", "4 7 1 9" matches "4719".
"""

from __future__ import annotations

Fact = tuple[str, str, str]

HELD_OUT: tuple[Fact, ...] = (
    ("My gym locker number is 3852.", "What is my gym locker number?", "3852"),
    ("My office extension is 60417.", "What is my office extension?", "60417"),
    ("My bike lock combination is 285.", "What is my bike lock combination?", "285"),
    ("My account number is 736914.", "What is my account number?", "736914"),
    ("My apartment number is 1207.", "What is my apartment number?", "1207"),
    ("I parked in spot 418.", "Which spot did I park in?", "418"),
    ("My PIN for the gate is 55023.", "What is my PIN for the gate?", "55023"),
    ("My zip code is 30542.", "What is my zip code?", "30542"),
    ("My grandmother was born in 1938.", "What year was my grandmother born?", "1938"),
    ("My sister's name is Margaret.", "What is my sister's name?", "margaret"),
    ("My dog is called Biscuit.", "What is my dog called?", "biscuit"),
    ("My manager's name is Daniel Okafor.", "What is my manager's name?", "okafor"),
    ("My son's teacher is Mrs. Alvarez.", "Who is my son's teacher?", "alvarez"),
    ("My cat's name is Pickles.", "What is my cat's name?", "pickles"),
    ("My favourite colour is teal.", "What is my favourite colour?", "teal"),
    ("My car is dark green.", "What colour is my car?", "green"),
    ("I grew up in Lisbon.", "Where did I grow up?", "lisbon"),
    ("My brother lives in Winnipeg.", "Where does my brother live?", "winnipeg"),
    ("My dentist appointment is on March 14.", "When is my dentist appointment?", "march 14"),
    ("My wife's birthday is on July 2.", "When is my wife's birthday?", "july 2"),
    ("My daughter is allergic to peanuts.", "What is my daughter allergic to?", "peanuts"),
    ("My favourite band is Radiohead.", "What is my favourite band?", "radiohead"),
)

TUNING: tuple[Fact, ...] = (
    ("My hotel room number is 512.", "What is my hotel room number?", "512"),
    ("My phone passcode is 80361.", "What is my phone passcode?", "80361"),
    ("My storage unit number is 7294.", "What is my storage unit number?", "7294"),
    ("My employee ID is 609153.", "What is my employee ID?", "609153"),
    ("My best friend's name is Priya.", "What is my best friend's name?", "priya"),
    ("My umbrella is yellow.", "What colour is my umbrella?", "yellow"),
    ("My parents live in Dublin.", "Where do my parents live?", "dublin"),
    ("My anniversary is on October 9.", "When is my anniversary?", "october 9"),
    ("My brother's name is Tomasz.", "What is my brother's name?", "tomasz"),
)

# Added by the `memq` helper (2026-12-03), written before any held-out result was looked at, to tune the recall of
# many similar facts from one user (`crowded`) on more than 9: mostly "my <thing> number is <digits>", as a user
# would tell several, plus names, places, colours and dates. Part of `--set tuning`; `--set tuning-first` is the
# 9 above alone.
TUNING_MEMQ: tuple[Fact, ...] = (
    ("My library card number is 40718.", "What is my library card number?", "40718"),
    ("My seat number is 27.", "What is my seat number?", "27"),
    ("My order number is 918462.", "What is my order number?", "918462"),
    ("My mailbox number is 36.", "What is my mailbox number?", "36"),
    ("My house number is 1184.", "What is my house number?", "1184"),
    ("The code for my safe is 9036.", "What is the code for my safe?", "9036"),
    ("My membership number is 552817.", "What is my membership number?", "552817"),
    ("My badge number is 3309.", "What is my badge number?", "3309"),
    ("My train leaves from platform 11.", "Which platform does my train leave from?", "11"),
    ("My sister's name is Ingrid.", "What is my sister's name?", "ingrid"),
    ("My dog's name is Biscuit.", "What is my dog's name?", "biscuit"),
    ("My car is green.", "What colour is my car?", "green"),
    ("I was born in Lisbon.", "Where was I born?", "lisbon"),
    ("My dentist appointment is on June 3.", "When is my dentist appointment?", "june 3"),
    ("My favourite fruit is mango.", "What is my favourite fruit?", "mango"),
)
TUNING_FIRST = TUNING
TUNING = (*TUNING_FIRST, *TUNING_MEMQ)
